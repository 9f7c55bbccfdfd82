"""CPU threads: how fast a training runs alone and beside a second one, at each thread count and OpenMP wait policy.

Two models:
  * world: `dreambooth train --model world` through the real CLI in a child process (the demo's photos, no prior
    preservation, no samples), its steady-state step rate read from its progress bar (benchlib);
  * sd15: one DreamBooth-LoRA step of the SD 1.5 architecture at --sd15-resolution (bench/gpu_step.py, random
    weights, batch 1 + 1 class image), seconds per step.

Each row runs one job alone, or two identical jobs at once (each in its own folder), under the environment and
`--threads` the row names; "tool default" passes neither, so the tool chooses. A row's figure is the mean over its
jobs. Run it alone on the machine: anything else running changes every figure.

    python bench/cpu_threads.py                      # world and sd15, every row (about 15 min on 2 cores)
    python bench/cpu_threads.py --models world --steps 200
    python bench/cpu_threads.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import benchlib as B  # noqa: E402

OPENMP_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS")

# (label, jobs at once, --threads or None for the tool's choice, extra environment)
ROWS = {
    "world": [
        ("alone, tool default", 1, None, {}),
        ("alone, 1 thread", 1, 1, {}),
        ("alone, 2 threads", 1, 2, {}),
        ("two at once, tool default", 2, None, {}),
        ("two at once, 2 threads (torch's default before)", 2, 2, {}),
        ("two at once, 2 threads, OMP_WAIT_POLICY=PASSIVE", 2, 2, {"OMP_WAIT_POLICY": "PASSIVE"}),
        ("two at once, 1 thread", 2, 1, {}),
    ],
    "sd15": [
        ("alone, tool default (every core)", 1, None, {}),
        ("alone, 1 thread", 1, 1, {}),
        ("alone, 2 threads, OMP_WAIT_POLICY=PASSIVE", 1, 2, {"OMP_WAIT_POLICY": "PASSIVE"}),
        ("two at once, tool default", 2, None, {}),
        ("two at once, 2 threads, OMP_WAIT_POLICY=PASSIVE", 2, 2, {"OMP_WAIT_POLICY": "PASSIVE"}),
        ("two at once, 1 thread", 2, 1, {}),
    ],
}


def clean_env() -> dict:
    """This process's environment without the OpenMP settings: each row sets its own."""
    env = {k: v for k, v in os.environ.items() if k not in OPENMP_VARIABLES}
    env.update(HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    return env


def world_job(args, work: Path, threads: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "dreambooth.cli", "train", "--model", "world", "--instance-dir", str(work / "photos"),
           "--instance-prompt", "a photo of sks dog", "--output-dir", str(work / "run"), "--max-steps", str(args.steps),
           "--num-samples", "0", "--overwrite"]  # fmt: skip
    return cmd + (["--threads", str(threads)] if threads is not None else [])


def sd15_job(args, work: Path, threads: int | None) -> list[str]:
    cmd = [sys.executable, str(HERE / "gpu_step.py"), "--device", "cpu", "--resolution", str(args.sd15_resolution),
           "--warmup", "1", "--steps", str(args.sd15_steps), "--json", str(work / "step.json")]  # fmt: skip
    # gpu_step.py times the tool's own step inside the tool's thread choice; the rows set OMP_NUM_THREADS for a count
    return cmd


def world_rate(run: B.Run, args) -> float | None:
    rate = B.steady_rate(run.bars("training"), max(5, args.steps // 10))
    return rate.get("steps_per_s")


def run_row(model: str, row: tuple, args, work: Path) -> dict:
    label, jobs, threads, extra = row
    env = clean_env() | extra
    if threads is not None and model == "sd15":
        env["OMP_NUM_THREADS"] = str(threads)
    folders = [work / model / f"{label.replace(' ', '_').replace(',', '')}-{i}" for i in range(jobs)]
    results: list[B.Run | None] = [None] * jobs

    def one(i: int) -> None:
        folder = folders[i]
        folder.mkdir(parents=True, exist_ok=True)
        if model == "world":
            os.symlink(work / "photos", folder / "photos")
            cmd = world_job(args, folder, threads)
        else:
            cmd = sd15_job(args, folder, threads)
        results[i] = B.run_timed(cmd, folder / "log.txt", env=env, cwd=B.REPO)

    workers = [threading.Thread(target=one, args=(i,)) for i in range(jobs)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    figures = []
    for folder, run in zip(folders, results):
        assert run is not None
        if run.rc != 0:
            raise SystemExit(f"{model} / {label}: job failed (exit {run.rc}); last output:\n{run.tail()}")
        if model == "world":
            figures.append(world_rate(run, args))
        else:
            figures.append(1 / json.loads((folder / "step.json").read_text())["s_per_step"])
    rates = [f for f in figures if f]
    return {
        "model": model,
        "row": label,
        "jobs": jobs,
        "threads": threads,
        "env": extra,
        "steps_per_s_each": rates,
        "steps_per_s": sum(rates) / len(rates) if rates else None,
        "load_after": B.loadavg(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["world", "sd15"], choices=tuple(ROWS))
    p.add_argument("--steps", type=int, default=200, help="world training steps per job (rate after the first 10 %%)")
    p.add_argument("--sd15-resolution", type=int, default=256)
    p.add_argument("--sd15-steps", type=int, default=3, help="timed SD 1.5 steps per job (after one untimed)")
    p.add_argument("--rows", nargs="*", default=None, help="only the rows whose label contains one of these words")
    p.add_argument("--json", default="")
    args = p.parse_args()

    print(B.describe_env(B.machine_info(), B.probe_python(sys.executable, env=clean_env())))
    print(f"command : {B.fmt_cmd([sys.executable] + sys.argv)}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="dreambooth-threads-") as tmp:
        work = Path(tmp)
        if "world" in args.models:
            from dreambooth.world.demo import write_photos

            write_photos("dog", work / "photos")
        for model in args.models:
            for row in ROWS[model]:
                if args.rows and not any(word in row[0] for word in args.rows):
                    continue
                res = run_row(model, row, args, work)
                results.append(res)
                each = ", ".join(f"{r:.3g}" for r in res["steps_per_s_each"])
                print(f"{model:<6} {res['row']:<52} {res['steps_per_s'] or float('nan'):8.3g} steps/s each  ({each})",
                      flush=True)  # fmt: skip
    print()
    print("| model | how the runs were started | steps/s each | vs. alone at the tool's default |")
    print("|---|---|---|---|")
    for model in args.models:
        alone = next((r["steps_per_s"] for r in results if r["model"] == model and r["row"].startswith("alone, tool")), None)
        for r in (r for r in results if r["model"] == model):
            ratio = f"{r['steps_per_s'] / alone:.2f}x" if alone and r["steps_per_s"] else "–"
            print(f"| {model} | {r['row']} | {r['steps_per_s']:.3g} | {ratio} |")
    B.write_json(args.json, {"results": results, "machine": B.machine_info()})


if __name__ == "__main__":
    main()
