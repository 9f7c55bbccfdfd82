"""The workspace: where the page keeps uploads, runs, images and scores, and how it finds run folders.

    WORKSPACE/uploads/<run>/photo-01.jpg ...   validated copies of the photos a run trains on (and their masks)
    WORKSPACE/settings/<run>/                  the files of a page run's settings: class and validation prompts, subjects
    WORKSPACE/runs/<run>/                      `dreambooth train` output folders started from the page
    WORKSPACE/images/<run>/NNN-<prompt>/       `dreambooth generate` output folders, one per Generate click
    WORKSPACE/scores/<run>/scores.json         `dreambooth evaluate` scores of those images
    WORKSPACE/samples/<class>/                 the world's sample subject, rendered as `dreambooth demo` renders it

A run is any folder under the workspace that holds LoRA weights, so folders made by the command line
(`dreambooth train --output-dir WORKSPACE/...`) show up too, and are used unchanged.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from ..fields import saved_settings
from ..lora.files import KOHYA_NAME, WEIGHT_NAME
from ..training.photos import slug

SETTINGS = "settings"  # WORKSPACE/settings/<run>/: text files of a page run's settings; SKIP has it
# never hold a run; keeps the scan short
SKIP = {"settings", "uploads", "images", "scores", "samples", "checkpoints", "validation", ".cache"}
MAX_DEPTH = 4


def new_run_name(workspace: Path, class_noun: str) -> str:
    """<class>-<date>-<time>, with a counter when two start in the same second."""
    base = f"{slug(class_noun, 40, 'subject')}-{time.strftime('%Y%m%d-%H%M%S')}"
    name, n = base, 2
    while (workspace / "runs" / name).exists() or (workspace / "uploads" / name).exists():
        name, n = f"{base}-{n}", n + 1
    return name


def find_runs(workspace: Path) -> list[str]:
    """Run folders (relative to the workspace, '/'-separated), newest first."""
    found = []
    for root, dirs, files in os.walk(workspace):
        depth = len(Path(root).relative_to(workspace).parts)
        dirs[:] = [] if depth >= MAX_DEPTH else [d for d in dirs if d not in SKIP and not d.startswith(".")]
        if WEIGHT_NAME in files:
            found.append(Path(root))
    found.sort(key=lambda p: (p / WEIGHT_NAME).stat().st_mtime, reverse=True)
    return [p.relative_to(workspace).as_posix() or "." for p in found]


def run_path(workspace: Path, run: str) -> Path | None:
    """The folder of a run the page listed; None for anything else the browser sends."""
    if not run or run not in find_runs(workspace):
        return None
    return workspace / run


def run_config(run_dir: Path) -> dict:
    """The TrainConfig the run was made with (its config.yaml), or {}."""
    return saved_settings(run_dir)


def lora_files(run_dir: Path) -> list[Path]:
    """The LoRA in the diffusers layout, and in the kohya layout (ComfyUI, A1111 / Forge) when the run wrote it."""
    return [p for p in (run_dir / WEIGHT_NAME, run_dir / KOHYA_NAME) if p.is_file()]


def images_dir(workspace: Path, run: str) -> Path:
    return workspace / "images" / slug(run.replace("/", "-"), 80, "run")


def scores_file(workspace: Path, run: str) -> Path:
    return workspace / "scores" / slug(run.replace("/", "-"), 80, "run") / "scores.json"


def next_images_folder(workspace: Path, run: str, prompt: str) -> Path:
    parent = images_dir(workspace, run)
    taken = [int(m.group(1)) for p in parent.glob("*") if (m := re.match(r"(\d+)-", p.name))] if parent.is_dir() else []
    return parent / f"{max(taken, default=0) + 1:03d}-{slug(prompt, 40)}"


def bench_reports(workspace: Path) -> list[Path]:
    """bench.html files `dreambooth bench` wrote somewhere under the workspace."""
    found = [p for pattern in ("bench.html", "*/bench.html", "*/*/bench.html") for p in workspace.glob(pattern)]
    return sorted(found)[:20]


ACTIVE_SECONDS = 600  # a run whose progress.jsonl has not grown for this long is not followed as training


def active_runs(workspace: Path) -> list[Path]:
    """Folders under the workspace training now, whoever started them (the page or `dreambooth train --output-dir
    WORKSPACE/...`): a progress.jsonl that grew in the last ten minutes and has not reached its last step."""
    from ..training import progress

    found = []
    now = time.time()
    for root, dirs, files in os.walk(workspace):
        depth = len(Path(root).relative_to(workspace).parts)
        dirs[:] = [] if depth >= MAX_DEPTH else [d for d in dirs if d not in SKIP and not d.startswith(".")]
        if progress.PROGRESS_NAME in files and now - (Path(root) / progress.PROGRESS_NAME).stat().st_mtime < ACTIVE_SECONDS:
            lines = progress.read(Path(root))
            if lines and lines[-1]["step"] < int(lines[-1].get("max_steps", 0)):
                found.append(Path(root))
    return found


def validation_images(run_dir: Path) -> list[Path]:
    """The run's validation grids: of --validation-prompt, else of --validation-prompts (a prompt a row)."""
    return sorted(run_dir.glob("validation/step-*.png")) or sorted(run_dir.glob("validation/prompts-step-*.png"))
