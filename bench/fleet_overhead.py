"""What Ray adds to each fleet run, measured with tasks that do (almost) nothing, on a Ray started in-process as
`dreambooth fleet` starts it (127.0.0.1, no dashboard):

  * start: `ray.init` to a connected driver, and `ray.shutdown`;
  * reused worker: --tasks trivial tasks through workers Ray keeps (the floor of Ray's scheduling cost per task);
  * fresh worker: --fresh trivial tasks with the options of a fleet run on a GPU (`max_calls=1`: a new worker process per task,
    as each run on a GPU gets), one CPU each;
  * fresh worker + imports: the same, the task importing what a training imports (torch, diffusers, the training
    loop) before it returns: the fixed cost a run pays in its own process before its first step.

Per-task figures are the wall time of the batch divided by its tasks, with every task able to run at once up to the
machine's CPUs. Run it alone on the machine: anything else running changes every figure.

    python bench/fleet_overhead.py                    # about a minute on 2 cores
    python bench/fleet_overhead.py --tasks 500 --fresh 20 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


def nothing() -> int:
    return os.getpid()


def imports_training() -> int:
    import dreambooth.training.loop  # noqa: F401  (torch, diffusers, peft, accelerate, the loop)

    return os.getpid()


def per_task(ray, function, n: int, options: dict) -> dict:
    task = ray.remote(**options)(function)
    ray.get(task.remote())  # the function exported and a first worker up: not counted
    started = time.perf_counter()
    pids = ray.get([task.remote() for _ in range(n)])
    wall = time.perf_counter() - started
    return {"tasks": n, "wall_s": round(wall, 3), "per_task_ms": round(wall / n * 1000, 2), "workers": len(set(pids))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=200, help="trivial tasks through reused workers")
    p.add_argument("--fresh", type=int, default=10, help="trivial tasks, each in a new worker process")
    p.add_argument("--json", default="", help="also write the figures to this file")
    args = p.parse_args()

    import logging

    import ray

    from dreambooth.config import FleetConfig
    from dreambooth.fleet.driver import task_options

    started = time.perf_counter()
    ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False, logging_level=logging.WARNING)
    init_s = time.perf_counter() - started
    cpus = ray.cluster_resources().get("CPU", 0)
    fleet = {**task_options(FleetConfig(cpus_per_run=1), cluster_gpus=0), "max_calls": 1}  # as a run on a GPU gets
    figures = {
        "machine": {"cpus": os.cpu_count(), "ray_cpus": cpus, "python": platform.python_version(), "ray": ray.__version__},
        "ray_init_s": round(init_s, 3),
        "reused_worker": per_task(ray, nothing, args.tasks, {"num_cpus": 1}),
        "fresh_worker": per_task(ray, nothing, args.fresh, fleet),
        "fresh_worker_with_training_imports": per_task(ray, imports_training, args.fresh, fleet),
    }
    started = time.perf_counter()
    ray.shutdown()
    figures["ray_shutdown_s"] = round(time.perf_counter() - started, 3)
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
