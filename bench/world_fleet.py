"""The world's five subjects as one fleet, beside the same work one run after another.

Each subject (dog, cat, teapot, vase, backpack) gets the demo's photos and the demo's training settings
(`world.demo.demo_settings`: masks, class prompts in every context, 400 class images, validation with the world's
reader), written into a fleet file. Then, each timed from process start to exit:

  * fleet: `dreambooth fleet` over the five (embedded Ray, --cpus-per-run CPUs a run); its rows carry the world's
    scores of each run's last validation (8 samples a prompt);
  * train x5: the same five configs as `dreambooth train --config`, one after another, into another folder;
  * demo x5: `dreambooth demo --subject S`, one after another (its training plus scoring the base and the LoRA on
    32 samples a prompt: more work than the other two, the figure the issue compares with).

Class images: each mode gets a class-image bank of its own (DREAMBOOTH_CACHE), so each draws them once.
Run it alone on the machine: anything else running changes every figure. At the demo's settings this takes over an
hour of CPU on 2 cores.

    python bench/world_fleet.py --out world-fleet                  # all three modes
    python bench/world_fleet.py --out wf --modes fleet --subjects dog cat --steps 50 --cpus-per-run 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

CLASSES = ("dog", "cat", "teapot", "vase", "backpack")
OWNED = ("output_dir", "resume", "overwrite", "threads")  # the fleet sets these itself


def subject_settings(cls: str, folder: Path, steps: int) -> dict:
    """The demo's training settings for `cls`, with its photos, class prompts and validation prompts in `folder`."""
    from dreambooth.fields import to_dict
    from dreambooth.world.demo import demo_settings, write_photos

    write_photos(cls, folder / "subject")
    cfg = demo_settings(cls, folder, steps) if steps else demo_settings(cls, folder)
    return {k: v for k, v in to_dict(cfg).items() if k not in OWNED}


def fleet_file(path: Path, subjects: list[str], work: Path, steps: int) -> Path:
    """A fleet file of the subjects at the demo's settings (each subject's full settings: they differ in every prompt)."""
    entries = [{"name": cls, **subject_settings(cls, work / cls, steps)} for cls in subjects]
    path.write_text(yaml.safe_dump({"defaults": {}, "subjects": entries}, sort_keys=False))
    return path


def timed(cmd: list[str], env: dict, log: Path) -> float:
    started = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {code}; see {log}")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the runs and world-fleet.json")
    p.add_argument("--subjects", nargs="+", default=list(CLASSES), choices=CLASSES)
    p.add_argument("--modes", nargs="+", default=["fleet", "train", "demo"], choices=("fleet", "train", "demo"))
    p.add_argument("--steps", type=int, default=0, help="training steps (default: the demo's)")
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="the fleet's --cpus-per-run")
    args = p.parse_args()

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    path = fleet_file(out / "fleet.yaml", args.subjects, out / "inputs", args.steps)
    cli = [sys.executable, "-m", "dreambooth.cli"]
    figures: dict = {"subjects": args.subjects, "steps": args.steps or "the demo's", "cpus_per_run": args.cpus_per_run}

    def env(mode: str) -> dict:
        return {**os.environ, "DREAMBOOTH_CACHE": str(out / mode / "bank")}

    def save() -> None:  # after every finished run, so an hour's figures survive a stop in the next mode
        (out / "world-fleet.json.part").write_text(json.dumps(figures, indent=1) + "\n")
        os.replace(out / "world-fleet.json.part", out / "world-fleet.json")

    if "fleet" in args.modes:
        cmd = [*cli, "fleet", str(path), "--output-dir", str(out / "fleet" / "runs"), "--cpus-per-run", str(args.cpus_per_run)]
        figures["fleet_s"] = round(timed(cmd, env("fleet"), out / "fleet.log"), 1)
        rows = json.loads((out / "fleet" / "runs" / "fleet.json").read_text())["subjects"]
        figures["rows"] = [{k: r.get(k) for k in ("name", "state", "seconds", "loss", "scores")} for r in rows]
        save()
    if "train" in args.modes:
        each: dict[str, float] = {}
        figures["train_each_s"] = each  # filled run by run, saved after each
        for entry in yaml.safe_load(path.read_text())["subjects"]:
            config = out / "train" / f"{entry['name']}.yaml"
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(yaml.safe_dump({k: v for k, v in entry.items() if k != "name"}))
            cmd = [*cli, "train", "--config", str(config), "--output-dir", str(out / "train" / entry["name"]), "--overwrite"]
            each[entry["name"]] = round(timed(cmd, env("train"), out / "train" / f"{entry['name']}.log"), 1)
            save()
        figures["train_total_s"] = round(sum(each.values()), 1)
    if "demo" in args.modes:
        each = {}
        figures["demo_each_s"] = each
        for cls in args.subjects:
            cmd = [*cli, "demo", "--subject", cls, "--output-dir", str(out / "demo" / cls)]
            if args.steps:
                cmd += ["--max-steps", str(args.steps)]
            (out / "demo").mkdir(exist_ok=True)
            each[cls] = round(timed(cmd, env("demo"), out / "demo" / f"{cls}.log"), 1)
            save()
        figures["demo_total_s"] = round(sum(each.values()), 1)
    save()
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
