"""The Evaluate tab's actions: score a run's generated images against its photos, beside the paper's rows."""

from __future__ import annotations

import hashlib
import html
import json
import time
from pathlib import Path

from .. import threads
from ..config import METRIC_NAMES, EvaluateConfig
from ..errors import UsageError
from ..evaluation.bench_report import REFERENCE, SOURCE, fmt
from . import runs
from .jobs import clock

SCORED = ("dino", "clip_i", "clip_t")  # PRES and DIV need class-prompt images and LPIPS weights, which the page does not make


def scores_table(run: str, result: dict | None) -> str:
    """The run's means (when scored) above the DreamBooth paper's reference rows."""
    names = [METRIC_NAMES[key] for key in SCORED]
    head = "".join(f"<th>{n}</th>" for n in ["", *names])
    rows = []
    if result:
        means = result.get("means", {})
        counts = result.get("counts", {})
        label = f"{run} ({counts.get('generated', '?')} images vs {counts.get('real', '?')} photos)"
        rows.append(
            f"<tr class='run'><td>{html.escape(label)}</td>" + "".join(f"<td>{fmt(means.get(k))}</td>" for k in SCORED) + "</tr>"
        )
    for ref in REFERENCE:
        if any(ref[k] is not None for k in SCORED):
            rows.append(
                f"<tr class='ref'><td><i>{html.escape(ref['name'])}</i></td>"
                + "".join(f"<td>{fmt(ref[k])}</td>" for k in SCORED)
                + "</tr>"
            )
    return (
        f"<table class='scores'><tr>{head}</tr>{''.join(rows)}</table>"
        f"<p class='source'>Reference rows: {html.escape(SOURCE)}, Table 1.</p>"
    )


def saved_scores(workspace: Path, run: str) -> dict | None:
    try:
        return json.loads(runs.scores_file(workspace, run).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_world_run(workspace: Path, run: str) -> bool:
    run_dir = runs.run_path(workspace, run)
    return run_dir is not None and runs.run_config(run_dir).get("model") == "world"


def show(workspace: Path, run: str) -> str:
    if is_world_run(workspace, run):
        return world_table(run, saved_world(workspace, run), world_dir(workspace, run))
    return scores_table(run, saved_scores(workspace, run) if runs.run_path(workspace, run) else None)


def score(workspace: Path, run: str, dino_model: str, clip_model: str) -> tuple[str, str]:
    """Run `dreambooth evaluate` on the images the page drew with this run: (message, table)."""
    from ..evaluation.evaluate import evaluate  # imported here: the page opens without loading torch

    run_dir = runs.run_path(workspace, run)
    if run_dir is None:
        return "Error: Choose a finished run first", scores_table(run, None)
    real = str(runs.run_config(run_dir).get("instance_dir") or "")
    generated = runs.images_dir(workspace, run)
    if not generated.is_dir():
        return "Error: No images of this run yet: draw some in the Generate tab first", scores_table(run, None)
    cfg = EvaluateConfig(
        real=real,
        generated=str(generated),
        output=str(runs.scores_file(workspace, run)),
        metrics=[key.replace("_", "-") for key in SCORED],
        dino_model=(dino_model or "").strip() or EvaluateConfig.dino_model,
        clip_model=(clip_model or "").strip() or EvaluateConfig.clip_model,
    )
    try:
        result = evaluate(cfg)
    except UsageError as e:
        return f"Error: {e}", scores_table(run, saved_scores(workspace, run))
    except Exception as e:  # noqa: BLE001 - a scoring model that fails to load must not take the page down
        return f"Error: {type(e).__name__}: {e}".splitlines()[0], scores_table(run, saved_scores(workspace, run))
    return f"scored {result['counts']['generated']} images", scores_table(run, result)


def bench_report(workspace: Path) -> tuple[str, list[str]]:
    """The newest `dreambooth bench` HTML report under the workspace, shown in a frame, and all of them as files."""
    reports = runs.bench_reports(workspace)
    if not reports:
        return "<p>No benchmark report in the workspace (run <code>dreambooth bench --output-dir WORKSPACE/bench</code>).</p>", []
    newest = max(reports, key=lambda p: p.stat().st_mtime)
    # Served by the page's file route, which only serves the workspace (see server.allowed_paths).
    src = "/gradio_api/file=" + html.escape(str(newest))
    frame = f"<iframe class='bench' src='{src}' title='benchmark report'></iframe>"
    return f"<p>{html.escape(str(newest.relative_to(workspace)))}</p>{frame}", [str(p) for p in reports]


# ---------------------------------------------------------------- runs on the world's base

WORLD_SAMPLES = 4  # per prompt; the demo draws 32 (its scores move in steps of 1/32, the page's in steps of 1/4)
SAMPLE_CHOICES = [("1", 1), ("2", 2), ("4 (quick)", 4), ("8", 8), ("16", 16), ("32 (the demo's)", 32)]
# Drawing and reading one world sample (25 steps at 32 px, a prompt's samples in one batch), in seconds: measured by
# bench/page_world_run.py on a 2-core CPU scoring with 32 samples a prompt, other work running beside it (load average
# 3-4). A page that has scored once uses its own measurement instead.
SECONDS_PER_SAMPLE = 0.42
LOADING_SECONDS = 5.0  # the world's model and reader
SCORE_NAMES = {
    "subject_fidelity": "subject fidelity",
    "context_fidelity": "context fidelity",
    "subject_in_context": "subject in context",
    "class_fidelity": "class fidelity",
    "class_drift": "class drift (lower is better)",
    "class_diversity": "class diversity",
}


def world_dir(workspace: Path, run: str) -> Path:
    return runs.scores_file(workspace, run).parent / "world"


def world_subject(cfg: dict) -> tuple[str, str]:
    """(class, identifier) of a world run, from its instance prompt `... <identifier> <class>`; UsageError otherwise."""
    from ..world.render import CLASSES

    words = str(cfg.get("instance_prompt") or "").split()
    if len(words) < 2 or words[-1] not in CLASSES:
        raise UsageError(
            f"the world's reader knows {', '.join(CLASSES)}; this run's instance prompt "
            f"'{cfg.get('instance_prompt', '')}' does not end in one of them"
        )
    return words[-1], words[-2]


def base_dir(workspace: Path, cls: str, identifier: str, n: int) -> Path:
    """Where the base model's samples and scores are kept: per class, identifier and samples a prompt, and per copy of
    the world's weights, so that a package that ships new weights draws its base afresh."""
    from ..models import identity
    from ..world import MODEL

    weights = hashlib.sha256(identity(MODEL).encode()).hexdigest()[:12]
    return workspace / "scores" / "world-base" / f"{cls}-{identifier}-n{n}-{weights}"


def base_scores(workspace: Path, pipe, reader, cls: str, identifier: str, n: int) -> tuple[dict, dict]:
    """The base model's scores and samples: drawn once per (class, identifier, n) and kept in the workspace, as the
    same seeds give the same images for every run."""
    from PIL import Image

    from .. import atomic
    from ..world.scores import prompts, sample_and_score

    cache = base_dir(workspace, cls, identifier, n)
    try:
        saved = json.loads((cache / "scores.json").read_text(encoding="utf-8"))
        images = {name: [Image.open(cache / f"{name.replace(':', '-')}-{i}.png").convert("RGB") for i in range(n)]
                  for name in prompts(cls, identifier)}  # fmt: skip
        return saved, images
    except (OSError, ValueError):
        pass
    scores, images = sample_and_score(pipe, reader, cls, n, identifier=identifier)
    tmp = atomic.temp_dir_beside(cache)
    for name, shots in images.items():
        for i, image in enumerate(shots):
            image.save(tmp / f"{name.replace(':', '-')}-{i}.png")
    (tmp / "scores.json").write_text(json.dumps(scores), encoding="utf-8")
    atomic.replace_dir(tmp, cache)
    return scores, images


def score_world(workspace: Path, run: str, samples_per_prompt, progress=None) -> tuple[str, str]:
    """The demo's before/after scores for a run on the world's base, drawn and read in the page: (message, HTML).
    The report (the demo's, with its grids) is written to WORKSPACE/scores/<run>/world/ in one piece."""
    from .. import atomic
    from ..lora.files import load_lora
    from ..models import load_pipeline
    from ..world import MODEL, TEXT_ENCODER_SCALE, folder, readers
    from ..world.demo import write_report
    from ..world.scores import sample_and_score

    def report(share: float, what: str) -> None:
        if progress is not None:
            progress(share, desc=what)

    run_dir = runs.run_path(workspace, run)
    if run_dir is None:
        return "Error: Choose a finished run first", ""
    cfg = runs.run_config(run_dir)
    try:
        cls, identifier = world_subject(cfg)
        n = int(samples_per_prompt or 0)
        if not 1 <= n <= 32:
            raise UsageError(f"samples per prompt {n}: pass 1 to 32 (the demo draws 32; 4 takes a minute on a CPU)")
    except (UsageError, ValueError, TypeError) as e:
        return f"Error: {e}", world_table(run, saved_world(workspace, run))
    photos = Path(str(cfg.get("instance_dir") or ""))
    report(0.0, "loading the world's model and reader")
    with threads.workload(0):  # its share of the cores beside a training the page may be running
        reader, info = readers.load(folder() / "reader")
        pipe = load_pipeline(MODEL)
        report(0.1, f"the base model: {n} samples of each prompt")
        before, before_images = base_scores(workspace, pipe, reader, cls, identifier, n)
        report(0.5, f"with the run's LoRA: {n} samples of each prompt")
        load_lora(pipe, run_dir, text_encoder_scale=TEXT_ENCODER_SCALE, model=MODEL)
        began = time.perf_counter()
        after, after_images = sample_and_score(pipe, reader, cls, n, identifier=identifier)
        per_sample = (time.perf_counter() - began) / (n * len(after_images))
    report(0.95, "writing the report")
    result = {"before": before, "after": after, "reader_accuracy": info["accuracy"], "samples_per_prompt": n,
              "class": cls, "identifier": identifier, "seconds_per_sample": per_sample}  # fmt: skip
    out = world_dir(workspace, run)
    tmp = atomic.temp_dir_beside(out)
    if photos.is_dir():
        write_report(tmp, cls, photos, before_images, after_images, result)
    atomic.write_text(tmp / "scores.json", json.dumps(result, indent=1))
    atomic.replace_dir(tmp, out)
    return f"scored {n} samples of each of {len(after_images)} prompts, before and after", world_table(run, result, out)


def seconds_per_sample(workspace: Path) -> tuple[float, str]:
    """(seconds to draw and read one sample, where the figure comes from): the page's newest scoring's own
    measurement, else SECONDS_PER_SAMPLE."""
    measured = []
    for path in (workspace / "scores").glob("*/world/scores.json"):
        try:
            measured.append((path.stat().st_mtime, float(json.loads(path.read_text(encoding="utf-8"))["seconds_per_sample"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if measured:
        return max(measured)[1], "as this page's last scoring took"
    return SECONDS_PER_SAMPLE, "as measured on a 2-core CPU; the page's first scoring measures this machine"


def estimate(workspace: Path, run: str, samples_per_prompt) -> str:
    """How long Score will take for a world run at `samples_per_prompt`: the samples it draws (the base model's too,
    unless kept from before) times the time a sample takes."""
    from ..world.scores import prompts

    if not run or not is_world_run(workspace, run):
        return ""
    try:
        cls, identifier = world_subject(runs.run_config(runs.run_path(workspace, run) or Path()))
        n = int(samples_per_prompt)
    except (UsageError, ValueError, TypeError):
        return ""
    count = len(prompts(cls, identifier)) * n
    kept = (base_dir(workspace, cls, identifier, n) / "scores.json").is_file()
    drawn = count if kept else 2 * count
    each, source = seconds_per_sample(workspace)
    which = "with the run; the base model's are kept from before" if kept else "with the base model and with the run"
    return (
        f"Scoring draws {drawn} samples ({n} of each of {count // n} prompts, {which}): about "
        f"**{clock(LOADING_SECONDS + drawn * each)}** at {each:.2f} s a sample, {source}."
    )


def saved_world(workspace: Path, run: str) -> dict | None:
    try:
        return json.loads((world_dir(workspace, run) / "scores.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def file_url(path: Path) -> str:
    # served by the page's file route, which serves only the workspace (see server.allowed_paths)
    return "/gradio_api/file=" + html.escape(str(path))


def world_table(run: str, result: dict | None, out: Path | None = None) -> str:
    """The demo's before/after table and, when the report is there, its grids: the first samples of each prompt."""
    if not result:
        return (
            "<p class='world'>Not scored yet: <b>Score</b> draws the demo's prompts (the subject alone, in six new "
            "contexts, and its class) with the base model and with the run's LoRA, and the world's reader reads every "
            "sample.</p>"
        )
    from ..world.scores import prompts

    n = result.get("samples_per_prompt", "?")
    rows = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{result['before'].get(k, float('nan')):.2f}</td>"
        f"<td>{result['after'].get(k, float('nan')):.2f}</td></tr>"
        for k, label in SCORE_NAMES.items()
    )
    text = (
        f"<table class='scores world'><tr><th>{html.escape(run)}</th><th>base model</th><th>after DreamBooth</th></tr>"
        f"{rows}</table><p class='source'>Read by the world's reader from {n} samples of each prompt (the demo "
        f"draws 32: these shares move in steps of 1/{n}). Subject fidelity counts samples of the subject's own colour "
        "and pattern, drift counts class samples that became the subject.</p>"
    )
    if out is not None and (out / "report").is_dir():
        asked = prompts(result.get("class", "dog"), result.get("identifier", "sks"))
        grids = "".join(
            f"<figure><figcaption>{html.escape(prompt)}</figcaption><div class='pair'>"
            f"<div><small>base model</small><img alt='before' "
            f"src='{file_url(out / 'report' / (name.replace(':', '-') + '-before.png'))}'></div>"
            f"<div><small>after DreamBooth</small><img alt='after' "
            f"src='{file_url(out / 'report' / (name.replace(':', '-') + '-after.png'))}'></div></div></figure>"
            for name, prompt in asked.items()
            if (out / "report" / f"{name.replace(':', '-')}-after.png").is_file()
        )
        text += f"<div class='world-grids'><p>Each prompt's first samples: the base model's, then the run's (same seeds).</p>{grids}</div>"
    return text
