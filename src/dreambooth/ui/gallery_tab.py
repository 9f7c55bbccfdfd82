"""The Gallery tab: one card per run in the workspace, with its photos, samples, scores and downloads; above them, a
table of each fleet (`dreambooth fleet`) in the workspace.

Built from the files the runs left (config.yaml, validation grids, the Generate tab's images, the Evaluate tab's
scores), so it lists runs trained before the server restarted and runs trained from the command line alike."""

from __future__ import annotations

import html
from pathlib import Path

from ..lora.files import which_file_where
from ..training.photos import IMAGE_SUFFIXES, MASK_SUFFIX
from . import evaluate_tab, runs
from .jobs import Jobs

MAX_PICTURES = 5


def pictures(paths: list[Path], workspace: Path, css: str) -> str:
    root = workspace.resolve()
    shown = [p for p in paths if p.resolve().is_relative_to(root)][:MAX_PICTURES]  # the file route serves nothing else
    return "".join(
        f"<img class='{css}' loading='lazy' alt='{html.escape(p.name)}' src='{evaluate_tab.file_url(p)}'>" for p in shown
    )


def photos_of(cfg: dict) -> list[Path]:
    folder = Path(str(cfg.get("instance_dir") or ""))
    if not str(cfg.get("instance_dir") or "") or not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.endswith(MASK_SUFFIX))


def samples_of(workspace: Path, run: str, run_dir: Path) -> list[Path]:
    """The newest validation grid or the run's samples, then the images drawn in the Generate tab, newest first."""
    made = sorted(runs.images_dir(workspace, run).glob("*/*.png"), key=lambda p: p.stat().st_mtime, reverse=True)
    made = [p for p in made if p.name != "grid.png"]
    own = [p for p in (run_dir / "samples.png",) if p.is_file()] or runs.validation_images(run_dir)[-1:]
    return own + made


def scores_of(workspace: Path, run: str) -> str:
    world = evaluate_tab.saved_world(workspace, run)
    if world:
        before, after = world["before"], world["after"]
        return "".join(
            f"<span class='score'>{html.escape(evaluate_tab.SCORE_NAMES[k].split(' (')[0])} "
            f"{before.get(k, float('nan')):.2f} → <b>{after.get(k, float('nan')):.2f}</b></span>"
            for k in ("subject_fidelity", "subject_in_context", "class_drift")
        )
    paper = evaluate_tab.saved_scores(workspace, run)
    if paper and paper.get("means"):
        return "".join(
            f"<span class='score'>{k.replace('_', '-').upper()} <b>{evaluate_tab.fmt(v)}</b></span>"
            for k, v in paper["means"].items()
        )
    return "<span class='score none'>not scored yet (Evaluate tab)</span>"


def card(workspace: Path, run: str) -> str:
    run_dir = workspace / run
    cfg = runs.run_config(run_dir)
    files = runs.lora_files(run_dir)
    downloads = " ".join(
        f"<a class='download' download='{html.escape(p.name)}' href='{evaluate_tab.file_url(p)}'>{html.escape(p.name)}</a>"
        for p in files
    )
    return (
        f"<div class='card' data-run='{html.escape(run)}'><h3>{html.escape(run)}</h3>"
        f"<p class='what'>base <code>{html.escape(str(cfg.get('model', '?')))}</code> · {cfg.get('max_steps', '?')} steps · "
        f"<i>{html.escape(str(cfg.get('instance_prompt', '')))}</i></p>"
        f"<div class='row photos'>{pictures(photos_of(cfg), workspace, 'photo')}</div>"
        f"<div class='row samples'>{pictures(samples_of(workspace, run, run_dir), workspace, 'sample')}</div>"
        f"<p class='scores'>{scores_of(workspace, run)}</p>"
        f"<p class='downloads'>{downloads}<br><small>{html.escape(which_file_where([p.name for p in files]))}</small></p></div>"
    )


def unfinished(workspace: Path, jobs: Jobs, listed: set[Path]) -> list[str]:
    """Cards for the page's runs that have no LoRA yet: stopped or interrupted ones say that Resume continues them."""
    cards = []
    for job in reversed(jobs.snapshot()):
        out = Path(job.cfg.output_dir)
        if (
            job.state in ("stopped", "failed")
            and out.resolve() not in listed
            and out.resolve() not in {Path(j.cfg.output_dir).resolve() for j in jobs.snapshot() if j.id > job.id}
        ):
            cards.append(
                f"<div class='card unfinished' data-run='{html.escape(job.name)}'><h3>{html.escape(job.name)}</h3>"
                f"<p>{html.escape(job.state)} at step {job.step}/{job.max_steps}: {html.escape(job.message)}</p>"
                f"<div class='row samples'>{pictures(runs.validation_images(out)[-1:], workspace, 'sample')}</div></div>"
            )
    return cards


def fleets_html(workspace: Path) -> str:
    """A read-only table of each fleet under the workspace (the fleet.json `dreambooth fleet` keeps up to date)."""
    from ..fleet import report

    found = sorted({p.parent for pattern in ("fleet.json", "*/fleet.json", "*/*/fleet.json") for p in workspace.glob(pattern)})
    return "".join(f"<div class='fleet'><h3>Fleet {html.escape(str(folder.relative_to(workspace)))}</h3>"
                   f"{report.table(report.read(folder))}</div>" for folder in found[:20])  # fmt: skip


def cards_html(workspace: Path, jobs: Jobs) -> str:
    found = runs.find_runs(workspace)
    listed = {(workspace / r).resolve() for r in found}
    cards = unfinished(workspace, jobs, listed) + [card(workspace, run) for run in found]
    if not cards:
        return fleets_html(workspace) + "<p class='gallery-empty'>No runs yet: train one in the Train tab.</p>"
    return fleets_html(workspace) + f"<div class='gallery'>{''.join(cards)}</div>"
