"""A world run trained and scored the way the page does it, without a browser: Sample subject, Start with the values
the page then shows (the demo's settings), the page's job queue and training worker, then the Evaluate tab's Score
at 32 samples per prompt. Prints the scores beside the machine and the versions, and writes them to --out.

    python bench/page_world_run.py --subject dog --out bench/results/page-world-run.json
    python bench/page_world_run.py --max-steps 20 --samples 2      # a quick look that the path works

The functions are the ones the page's buttons call (ui/train_tab.sample_subject and start, ui/jobs.Jobs,
ui/evaluate_tab.score_world), given the values the page's controls hold after Sample subject.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from benchlib import loadavg, machine_info

from dreambooth.ui import controls, evaluate_tab, runs, train_tab
from dreambooth.ui.jobs import Jobs
from dreambooth.world.scores import SCORES


def versions() -> dict:
    import diffusers
    import peft
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "peft": peft.__version__, "torch_threads": torch.get_num_threads()}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subject", default="dog", help="one of the world's five sample subjects")
    p.add_argument("--samples", type=int, default=32, help="samples per prompt in Score (the demo's: 32)")
    p.add_argument("--max-steps", type=int, default=0, help="change the page's Steps (0: leave the demo's 1,000)")
    p.add_argument("--workspace", default="", help="the page's workspace (default: a temporary folder)")
    p.add_argument("--out", default="", help="JSON file for the scores, settings, times, machine and versions")
    args = p.parse_args(argv)

    workspace = Path(args.workspace or tempfile.mkdtemp(prefix="page-world-run-"))
    workspace.mkdir(parents=True, exist_ok=True)
    began = time.time()
    files, noun, identifier, model, _, *values = train_tab.sample_subject(workspace, args.subject)
    shown = dict(zip(controls.SHOWN, [model, *values]))
    if args.max_steps:
        shown["max_steps"] = args.max_steps
    jobs = Jobs(state_file=workspace / "jobs.json")
    message = train_tab.start(workspace, jobs, files, "", noun, identifier, *[shown[n] for n in controls.SHOWN])
    print(message, flush=True)
    if "queued" not in message:
        return 1
    while (job := jobs.snapshot()[-1]).state in ("queued", "running"):
        time.sleep(5)
    trained = time.time() - began
    if job.state != "done":
        print(f"training {job.state}: {job.message}", file=sys.stderr)
        return 1
    run = runs.find_runs(workspace)[0]
    began_scoring = time.time()
    message, _ = evaluate_tab.score_world(workspace, run, args.samples)
    scored = time.time() - began_scoring
    print(message, flush=True)
    result = json.loads((evaluate_tab.world_dir(workspace, run) / "scores.json").read_text())
    out = {
        "subject": args.subject,
        "samples_per_prompt": args.samples,
        # the paths as the workspace names them, not as this machine does
        "settings": json.loads(json.dumps(runs.run_config(workspace / run)).replace(str(workspace), "WORKSPACE")),
        "before": result["before"],
        "after": result["after"],
        "train_s": round(trained, 1),
        "score_s": round(scored, 1),
        "seconds_per_sample": result.get("seconds_per_sample"),
        "machine": machine_info(),
        "loadavg": loadavg(),
        "versions": versions(),
    }
    for name in SCORES:
        print(f"  {name:<20} base model {result['before'][name]:.2f}   page run {result['after'][name]:.2f}")
    print(f"trained in {trained:.0f} s, scored in {scored:.0f} s; machine {json.dumps(out['machine'])}")
    print(f"versions {json.dumps(out['versions'])}; load average {out['loadavg']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
