"""`dreambooth bench --fleet`: each DreamBench subject (training, drawing, scoring) is one task on Ray, placed and
retried as `dreambooth fleet` places and retries its runs, after the class-bank tasks its class needs; the report is
the one `bench` writes."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from ..config import BenchConfig, FleetConfig, check_bench
from ..errors import TrainingError, UsageError
from . import driver, run
from . import plan as P


def bench_fleet(cfg: BenchConfig) -> Path:
    from ..evaluation import bench as B
    from ..evaluation import bench_report

    check_bench(cfg)
    if len(cfg.method) > 1:
        raise UsageError(
            f"--fleet with --method {' '.join(cfg.method)}: the fleet runs one method; run the bench once per method, "
            f"or leave out --fleet"
        )
    ray = driver.import_ray()
    placement = FleetConfig(fleet="-", output_dir=cfg.output_dir, address=cfg.address, gpus_per_run=cfg.gpus_per_run,
                            cpus_per_run=cfg.cpus_per_run)  # fmt: skip
    cfg = dataclasses.replace(cfg, threads=driver.run_threads(placement))
    job = B.job_of(cfg)
    job.out.mkdir(parents=True, exist_ok=True)
    # the subjects still to train, by the class images they draw: one bank task per entry, before them
    training = [P.Subject(s, c, bank=P.bank_key(c)) for s in job.subjects
                for c in [B.subject_train_config(cfg, job.base, s, job.benchmark.classes[s], job.dataset, job.out)]
                if B.given_lora(cfg, s) is None and B.finished(job.out / s, job.settings) is None
                and not P.finished(c)]  # fmt: skip
    banks = {s.name: s.bank for s in training}
    started_here = driver.connect(ray, placement)
    started = time.time()
    try:
        options = driver.task_options(placement, ray.cluster_resources().get("GPU", 0))
        made = {}
        for i, bank in enumerate(P.banks(training)):
            made[bank.key] = ray.remote(**options)(run.make_bank).remote(bank.cfg, str(job.out / "class-banks" / f"bank-{i}.log"))
        task = ray.remote(**options)(run.bench_subject)
        refs = {s: task.remote(cfg, s, made.get(banks.get(s, ""))) for s in job.subjects}
        rows, failed = [], {}
        for subject, ref in refs.items():
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as e:
                result = {"error": driver.crash_words(e, placement.max_retries)}
            if "row" in result:
                rows.append(result["row"])
                print(f"bench: {subject} done ({time.time() - started:.0f} s)", flush=True)
            else:
                failed[subject] = result["error"]
                print(f"bench: {subject} failed: {result['error']}", flush=True)
    finally:
        if started_here:
            ray.shutdown()
    bench_report.write(job.out, rows, job.settings)
    print(bench_report.markdown_table(rows))
    print(f"bench: {len(rows)} subjects -> {job.out / 'bench.md'}, bench.csv, bench.json, bench.html", flush=True)
    if failed:
        raise TrainingError(
            f"{len(failed)} of {len(refs)} subjects failed ({', '.join(failed)}); their logs: OUT/<subject>/fleet.log"
        )
    return job.out
