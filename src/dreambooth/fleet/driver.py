"""`dreambooth fleet`: the plan, finished subjects skipped, Ray started here or joined, the class-bank tasks and one task
per subject handed to it, their states followed into fleet.json / fleet.html and the progress lines. The one module
that imports Ray."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from .. import atomic
from ..config import FleetConfig, check_fleet
from ..errors import TrainingError, UsageError, warn
from ..fields import to_yaml
from . import plan as P
from . import report, run

INSTALL = 'the fleet runs on Ray, an optional extra: pip install -e ".[fleet]" (or pip install "ray==2.60.0")'
POLL = 1.0  # seconds between two looks at the tasks and their folders
STOP_WAIT = 60.0  # seconds Ctrl-C waits for the runs to save their checkpoints before Ray is ended


def import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError(INSTALL) from None
    return ray


def run_threads(cfg: FleetConfig) -> int:
    """Torch's CPU threads in each run: its own CPUs, at least one."""
    return max(1, int(cfg.cpus_per_run))


def task_options(cfg: FleetConfig, cluster_gpus: float) -> dict:
    """Ray's options for each task: its CPUs and GPU share (none where the cluster has no GPU), retries of a dead
    worker, and OpenMP's threads set before torch starts. A run on a GPU gets a fresh worker process (max_calls 1:
    whatever it held, its GPU memory too, goes with it); runs on CPUs reuse their workers, which then import torch and
    the training stack once, not once a run (seconds each)."""
    env = {"OMP_NUM_THREADS": str(run_threads(cfg))}
    if cfg.bank_dir:
        env["DREAMBOOTH_CACHE"] = str(Path(cfg.bank_dir).expanduser().resolve())
    gpus = cfg.gpus_per_run if cluster_gpus > 0 else 0
    return {
        "num_cpus": cfg.cpus_per_run,
        "num_gpus": gpus,
        "max_retries": cfg.max_retries,
        "max_calls": 1 if gpus else 0,
        "runtime_env": {"env_vars": env},
    }


def connect(ray, cfg: FleetConfig) -> bool:
    """Join --address, or start a Ray of this machine inside the process: no dashboard unless --dashboard, the loopback
    address as its node's. Token authentication stays as Ray sets it (on, for a new local Ray). Returns whether this
    call started the connection (and must end it)."""
    if ray.is_initialized():  # a caller (a script, a test) holds one already
        return False
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        warn("RAY_AUTH_MODE=disabled: anyone who reaches this Ray's ports can run code on it; unset it to keep token auth")
    import logging

    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if cfg.address:
            ray.init(address=cfg.address, **quiet)
        else:
            ray.init(include_dashboard=cfg.dashboard, _node_ip_address="127.0.0.1", **quiet)
    except (ConnectionError, ValueError, RuntimeError) as e:
        where = f"--address {cfg.address}" if cfg.address else "the embedded Ray"
        raise UsageError(f"{where}: cannot connect ({run.one_line(e)}); start a cluster with `ray start --head`") from None
    return True


class Events:
    """Progress for people (a line per state change, a summary) or, with --json, one JSON object a line."""

    def __init__(self, as_json: bool):
        self.as_json = as_json

    def state(self, row: dict, where: str = "") -> None:
        if self.as_json:
            print(json.dumps({"event": "state", **row}), flush=True)
            return
        words = {
            "running": f"running{where}",
            "done": f"done in {row.get('seconds') or 0:.1f} s"
            + (f", loss {row['loss']:.4f}" if row.get("loss") is not None else ""),
            "failed": f"failed: {row.get('error')}",
            "queued": "queued" + (f" ({row['error']})" if row.get("error") else ""),
        }
        print(f"fleet: {row['name']} {words[row['state']]}", flush=True)

    def summary(self, rows: list[dict], eta: float | None) -> None:
        n = report.counts(rows)
        if self.as_json:
            print(json.dumps({"event": "summary", **n, "eta_seconds": eta}), flush=True)
            return
        left = f"; about {eta / 60:.1f} min left" if eta is not None else ""
        print(f"fleet: {n['done']} done, {n['running']} running, {n['queued']} queued, {n['failed']} failed{left}", flush=True)


def eta(rows: list[dict], times: list[float]) -> float | None:
    """Seconds left: the mean time of the runs finished here, for each wave of the runs still to go at the pace the
    running ones set."""
    n = report.counts(rows)
    if not times or not (n["queued"] or n["running"]):
        return None
    waves = math.ceil((n["queued"] + n["running"]) / max(1, n["running"]))
    return round(sum(times) / len(times) * waves, 1)


def first_rows(the_plan: P.Plan, out: Path) -> tuple[list[dict], list[P.Subject]]:
    """A row per subject: failed (its settings were refused), done (its LoRA is there with these settings; its time
    kept from the last fleet.json), or queued; and the subjects to run."""
    before = {r["name"]: r for r in report.read(out)}
    rows, todo = [], []
    for s in the_plan.subjects:
        if s.cfg is None:
            rows.append(report.new_row(s.name, "failed", s.error))
        elif P.finished(s.cfg):
            rows.append({**report.new_row(s.name, "done"), "seconds": before.get(s.name, {}).get("seconds"),
                         **report.run_files(Path(s.cfg.output_dir))})  # fmt: skip
        else:
            rows.append(report.new_row(s.name))
            todo.append(s)
    return rows, todo


def launch(ray, todo: list[P.Subject], banks: list[P.Bank], options: dict, out: Path) -> dict:
    """The class-bank tasks the subjects to run need, then a task per subject, each waiting on its bank's (Ray starts
    it once that one's result exists). Returns each subject task's reference -> the subject's name."""
    train_task = ray.remote(**options)(run.train_subject)
    bank_task = ray.remote(**options)(run.make_bank)
    made = {}
    for i, bank in enumerate(b for b in banks if any(s.bank == b.key for s in todo)):
        made[bank.key] = bank_task.remote(bank.cfg, str(out / "class-banks" / f"bank-{i}.log"))
    return {train_task.remote(s.cfg, made.get(s.bank)): s.name for s in todo}


def crash_words(e: BaseException, retries: int) -> str:
    ray = import_ray()
    if isinstance(e, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.OutOfMemoryError)):
        return (f"its worker died {retries + 1} times (killed, out of memory or its machine gone): "
                f"{run.one_line(e)}; run the fleet again to continue from its checkpoint")  # fmt: skip
    if isinstance(e, ray.exceptions.TaskCancelledError):
        return "stopped; run the fleet again to continue from its checkpoint"
    return run.one_line(e)


def follow(ray, refs: dict, rows: list[dict], out: Path, cfg: FleetConfig, events: Events, since: float) -> None:
    """Wait for the tasks; a row changes state when its task's folder says it started (again) or its task returns."""
    by_name = {r["name"]: r for r in rows}
    seen: dict[str, float] = {}
    times: list[float] = []
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL)
        changed = False
        for name in [refs[r] for r in pending]:
            where = attempt(out / name, since)
            if where and where[0] != seen.get(name):
                seen[name] = where[0]
                row = by_name[name]
                row["state"] = "running"
                events.state(row, where[1])
                changed = True
        for ref in ready:
            row = by_name[refs[ref]]
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as e:
                result = {"state": "failed", "error": crash_words(e, cfg.max_retries)}
            row.update(result)
            if row["state"] == "done":
                times.append(row.get("seconds") or 0.0)
            events.state(row)
            changed = True
        if changed:
            report.write(out, rows, cfg.fleet)
            events.summary(rows, eta(rows, times))


def attempt(folder: Path, since: float) -> tuple[float, str] | None:
    """(start time, ' on HOST (pid N)') of the newest attempt a task announced in `folder` since `since`, else None."""
    try:
        info = json.loads((folder / report.TASK_NAME).read_text(encoding="utf-8"))
        started = float(info["started"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if started < since:
        return None
    gpu = f", GPU {info['gpus']}" if info.get("gpus") else ""
    return started, f" on {info.get('host')} (pid {info.get('pid')}{gpu})"


def fleet(cfg: FleetConfig) -> Path:
    """Train every subject of the fleet file on Ray; return the output folder. Raises TrainingError (exit 1) when any
    subject failed, after every other one finished."""
    check_fleet(cfg)
    ray = import_ray()
    out = Path(cfg.output_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir {cfg.output_dir}: is a file; pass a folder path")
    the_plan = P.plan(cfg.fleet, out, run_threads(cfg))
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "config.yaml", to_yaml(cfg))
    rows, todo = first_rows(the_plan, out)
    events = Events(cfg.json)
    for row in rows:
        events.state(row)
    report.write(out, rows, cfg.fleet)
    if todo:
        started_here = connect(ray, cfg)
        since, refs = time.time(), {}
        try:
            options = task_options(cfg, ray.cluster_resources().get("GPU", 0))
            refs = launch(ray, todo, the_plan.banks, options, out)
            events.summary(rows, None)
            follow(ray, refs, rows, out, cfg, events, since)
        except KeyboardInterrupt:
            for ref in refs:
                ray.cancel(ref)  # a KeyboardInterrupt in the run: between two steps it saves a checkpoint first
            print("fleet: stopping; the runs save a checkpoint (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
            ray.wait(list(refs), num_returns=len(refs), timeout=STOP_WAIT)
            for row in rows:
                if row["state"] in ("running", "queued"):
                    row.update(state="queued", error="stopped; run the fleet again to continue it")
            report.write(out, rows, cfg.fleet)
            print(f"fleet: stopped; run it again to continue (finished subjects are kept): {out / report.JSON_NAME}",
                  file=sys.stderr, flush=True)  # fmt: skip
            raise
        finally:
            if started_here:
                ray.shutdown()
    report.write(out, rows, cfg.fleet)
    if not todo:
        events.summary(rows, None)
    failed = [r["name"] for r in rows if r["state"] == "failed"]
    if failed:
        raise TrainingError(
            f"{len(failed)} of {len(rows)} subjects failed ({', '.join(failed)}); their errors are in {out / report.JSON_NAME}"
        )
    if not cfg.json:
        print(f"fleet: {len(rows)} subjects done -> {out / report.JSON_NAME}, {report.HTML_NAME}", flush=True)
    return out
