"""The Evaluate tab's actions: score a run's generated images against its photos, beside the paper's rows."""

from __future__ import annotations

import html
import json
from pathlib import Path

from ..config import METRIC_NAMES, EvaluateConfig
from ..errors import UsageError
from ..evaluation.bench_report import REFERENCE, SOURCE, fmt
from . import runs

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


def show(workspace: Path, run: str) -> str:
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
