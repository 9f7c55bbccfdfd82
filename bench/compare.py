"""Markdown table of two (or more) runs of setting (a) from the --json files of the bench scripts.

    python bench/compare.py ours.json theirs.json [more.json ...] [--labels dreambooth diffusers ...]

Ratios compare the first file with the second: step rate first/second (above 1: the first trains
faster) and whole-job time second/first (above 1: the first finishes sooner).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def get(d: dict, *path, default=None):
    for k in path:
        if not isinstance(d, dict) or k not in d or d[k] is None:
            return default
        d = d[k]
    return d


ROWS = [
    ("steady-state it/s", ("a", "steps_per_s"), 2),
    ("steady-state images/s", ("a", "images_per_s"), 2),
    ("median of 10-step windows, it/s", ("a", "steady", "median_10step_window_steps_per_s"), 2),
    ("CPU s per step (steady phase)", ("a", "steady", "cpu_s_per_step"), 3),
    ("cores busy (steady phase)", ("a", "steady", "cpu_cores_busy"), 2),
    ("other processes' cores busy meanwhile (steady phase)", ("a", "steady", "other_processes_cores"), 2),
    ("other processes' cores busy over the whole job", ("a", "other_processes_cores"), 2),
    ("start-up: process start -> first step, class images excluded (s)", ("a", "startup_s"), 1),
    ("class images/s", ("a", "class_images_per_s"), 2),
    ("class-image generation (s)", ("a", "class_images_s"), 1),
    ("training loop (s)", ("a", "training_bar_s"), 1),
    ("after training: save, samples, card (s)", ("a", "after_training_s"), 1),
    ("whole job, wall (s)", ("a", "wall_s"), 1),
    ("whole job, CPU (s)", ("a", "cpu_s"), 1),
    ("peak RSS (MiB)", ("a", "max_rss_mib"), 0),
    ("CUDA max allocated (MiB)", ("a", "cuda_max_allocated_mib"), 0),
    ("generate: s/image (default steps)", ("a", "generate", "s_per_image"), 3),
    ("generate: wall incl. start-up (s)", ("a", "generate", "wall_s"), 1),
]


def cell(v, digits):
    if v is None:
        return "—"
    if isinstance(v, (int, float)):
        return f"{v:.{digits}f}"
    return str(v)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+")
    p.add_argument("--labels", nargs="+", default=None)
    args = p.parse_args()
    runs = [json.loads(Path(f).read_text()) for f in args.files]
    labels = args.labels or [r.get("tool", f) for r, f in zip(runs, args.files)]
    print("| figure | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for name, path, digits in ROWS:
        values = [get(r, *path) for r in runs]
        if all(v is None for v in values):
            continue
        print(f"| {name} | " + " | ".join(cell(v, digits) for v in values) + " |")
    loads = [
        f"{'/'.join(str(x) for x in get(r, 'a', 'load_before', default=[]))} → "
        f"{'/'.join(str(x) for x in get(r, 'a', 'load_after', default=[]))}"
        for r in runs
    ]
    print("| load average 1/5/15 min, before → after | " + " | ".join(loads) + " |")
    if len(runs) >= 2:
        a, b = runs[0], runs[1]
        ra, rb = get(a, "a", "steps_per_s"), get(b, "a", "steps_per_s")
        wa, wb = get(a, "a", "wall_s"), get(b, "a", "wall_s")
        print()
        if ra and rb:
            print(f"- step rate {labels[0]} / {labels[1]}: **{ra / rb:.2f}**")
        if wa and wb:
            print(f"- whole-job time {labels[1]} / {labels[0]}: **{wb / wa:.2f}**")


if __name__ == "__main__":
    main()
