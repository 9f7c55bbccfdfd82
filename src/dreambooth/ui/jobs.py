"""Training jobs: a queue, one worker thread that runs them one at a time, and their state for the page.

The state lives in the server process, not in a browser session: closing the page does not stop a
run, and a page opened later polls the same jobs (with a timer) and shows them. One training at a time
because a second one would only halve the speed of both and double the memory.

With a state file (WORKSPACE/jobs.json) the jobs outlive the server: each change of state is written there, and a
new server reads it back; a job that was running when the server went away is listed as stopped, for Resume to
continue from its newest checkpoint, and the queued ones are queued again.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import atomic
from ..errors import TrainingError, UsageError, warn

FINISHED = ("done", "stopped", "failed", "cancelled")


@dataclass
class Job:
    id: int
    name: str
    cfg: Any  # a TrainConfig
    notes: list[str] = field(default_factory=list)  # e.g. photos left out, shown with the job
    state: str = "queued"  # queued -> running -> done | stopped | failed; queued -> cancelled
    step: int = 0
    max_steps: int = 0
    loss: float | None = None
    seconds: float = 0.0
    first: tuple[int, float] | None = None  # (step, seconds) of the first step seen: the rate leaves out model loading
    validations: list[str] = field(default_factory=list)
    message: str = ""
    output: str = ""
    stop: threading.Event = field(default_factory=threading.Event, repr=False)


def default_train(cfg, on_event, stop_event):
    from ..evaluation.validation_scores import validation_scorer
    from ..training.loop import train  # imported here: the page opens without loading torch

    return train(cfg, on_event, stop_event, validation_scorer(cfg))


INTERRUPTED = "interrupted when the server stopped; Resume continues it from its newest checkpoint"
SAVED_FIELDS = ("id", "name", "notes", "state", "step", "max_steps", "loss", "message", "output")


class Jobs:
    def __init__(self, train_fn=default_train, state_file: Path | None = None) -> None:
        self._train = train_fn
        self._lock = threading.Lock()
        self._jobs: list[Job] = []
        self._pending: queue.Queue[Job] = queue.Queue()
        self._state_file = state_file
        self._closing = False
        self._jobs = self._load() if state_file else []
        self._ids = itertools.count(max((j.id for j in self._jobs), default=0) + 1)
        for job in self._jobs:
            if job.state == "queued":
                self._pending.put(job)
        # A daemon thread: stopping the server ends it; shutdown() stops a run with a checkpoint first.
        threading.Thread(target=self._work, daemon=True, name="dreambooth-training").start()

    # ------------------------------------------------------------ the state file

    def _load(self) -> list[Job]:
        from ..config import TrainConfig
        from ..fields import from_dict

        path = self._state_file
        assert path is not None
        if not path.is_file():
            return []
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            found = [
                Job(
                    **{k: item[k] for k in SAVED_FIELDS if k in item}, cfg=from_dict(TrainConfig, item["cfg"], "a job's settings")
                )
                for item in saved["jobs"]
            ]
        except (OSError, ValueError, KeyError, TypeError, UsageError) as e:
            # kept aside, not overwritten by the next save: the runs themselves are untouched in their folders
            aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
            path.replace(aside)
            warn(f"{path}: not a job list this version reads ({str(e).splitlines()[0][:200]}); moved to {aside.name}, "
                 "starting with no jobs")  # fmt: skip
            return []
        from ..training import progress

        for job in found:
            lines = progress.read(Path(job.cfg.output_dir))
            if lines and job.state in ("running", "stopped", "failed"):  # the state was saved before its last steps
                job.step, job.loss = lines[-1]["step"], lines[-1]["loss"]
            if job.state == "running":
                job.state, job.message = "stopped", INTERRUPTED
            job.validations = [str(p) for p in sorted(Path(job.cfg.output_dir).glob("validation/step-*.png"))]
        return found

    def _save(self) -> None:
        """Called with the lock held, at each change of state (not at each step: the run's progress.jsonl has those)."""
        if self._state_file is None:
            return
        from ..fields import to_dict

        items = [{**{k: getattr(j, k) for k in SAVED_FIELDS}, "cfg": to_dict(j.cfg)} for j in self._jobs]
        try:
            atomic.write_text(self._state_file, json.dumps({"jobs": items}, indent=1))
        except OSError as e:
            warn(f"{self._state_file}: could not save the job list ({e.strerror})")

    def shutdown(self, timeout: float = 60.0) -> None:
        """Before the server exits: start nothing more, stop the running job with a checkpoint, keep the queue."""
        with self._lock:
            self._closing = True
            running = [j for j in self._jobs if j.state == "running"]
            for job in running:
                job.stop.set()
        end = time.time() + timeout
        while running and time.time() < end and any(j.state == "running" for j in running):
            time.sleep(0.1)

    # ------------------------------------------------------------ what the page asks

    def submit(self, name: str, cfg, notes: list[str] | None = None) -> Job:
        job = Job(next(self._ids), name, cfg, list(notes or []), max_steps=cfg.max_steps)
        with self._lock:
            self._jobs.append(job)
            self._save()
        self._pending.put(job)
        return job

    def stop(self, job_id: int) -> None:
        """A running job stops after its current step with a checkpoint; a queued one never starts."""
        with self._lock:
            job = self._find(job_id)
            if job is None:
                return
            if job.state == "queued":
                job.state, job.message = "cancelled", "cancelled before it started"
                self._save()
            job.stop.set()

    def resume(self, job_id: int) -> Job | None:
        """A new job that continues a stopped (or failed) one from its newest checkpoint."""
        with self._lock:
            job = self._find(job_id)
        if job is None or job.state not in ("stopped", "failed"):
            return None
        return self.submit(job.name, dataclasses.replace(job.cfg, resume=True), [f"resumes job {job.id}"])

    def snapshot(self) -> list[Job]:
        """Copies of every job, newest last, safe to read while the worker updates the originals."""
        with self._lock:
            return [dataclasses.replace(j, notes=list(j.notes), validations=list(j.validations)) for j in self._jobs]

    def place(self, job_id: int) -> int:
        """1 for the next queued job to run, 2 for the one after, ...; 0 when not queued."""
        with self._lock:
            waiting = [j.id for j in self._jobs if j.state == "queued"]
        return waiting.index(job_id) + 1 if job_id in waiting else 0

    def _find(self, job_id: int) -> Job | None:
        return next((j for j in self._jobs if j.id == job_id), None)

    # ------------------------------------------------------------ the worker

    def _work(self) -> None:
        while True:
            job = self._pending.get()
            with self._lock:
                if job.state != "queued" or self._closing:  # cancelled while waiting, or the server is going
                    continue
                job.state = "running"
                self._save()
            self._run(job)

    def _run(self, job: Job) -> None:
        def on_event(event: dict) -> None:
            with self._lock:
                if event["kind"] == "step":
                    job.step, job.max_steps, job.seconds = event["step"], event["max_steps"], event["seconds"]
                    job.loss = event["loss"] if event["loss"] is not None else job.loss
                    job.first = job.first or (event["step"] - 1, 0.0)
                elif event["kind"] == "validation":
                    job.validations.append(event["path"])
                elif event["kind"] == "done":
                    job.output = event["path"]

        try:
            out = self._train(job.cfg, on_event, job.stop)
            state, message = "done", f"finished: LoRA saved in {Path(out).name}"
            job.output = str(out)
        except KeyboardInterrupt:
            state, message = "stopped", f"stopped at step {job.step} with a checkpoint saved; Resume continues it"
        except UsageError as e:
            state, message = "failed", str(e)
        except TrainingError as e:
            state, message = "failed", f"training stopped: {e}"
        except Exception as e:  # noqa: BLE001 - the worker must survive any one job; the page shows why it ended
            state, message = "failed", f"{type(e).__name__}: {e}".splitlines()[0]
        with self._lock:
            job.state, job.message = state, message
            self._save()


def seconds_left(job: Job) -> float | None:
    """Time left from the rate of the steps this run has made so far (model loading and class images excluded)."""
    if job.first is None or job.step <= job.first[0]:
        return None
    rate = (job.seconds - job.first[1]) / (job.step - job.first[0])
    return rate * (job.max_steps - job.step)


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def status_line(job: Job, place: int = 0) -> str:
    """One line for the page: where the job is, its step, loss and time left."""
    if job.state == "queued":
        return f"{job.name}: queued, place {place} in line" if place else f"{job.name}: queued"
    if job.state == "running":
        if job.first is None:
            return f"{job.name}: preparing (loading the model, drawing class images)"
        parts = [f"step {job.step}/{job.max_steps}"]
        if job.loss is not None:
            parts.append(f"loss {job.loss:.4f}")
        left = seconds_left(job)
        parts.append(f"{clock(left)} left" if left is not None else "estimating time left")
        return f"{job.name}: " + " · ".join(parts)
    return f"{job.name}: {job.state} — {job.message}" if job.message else f"{job.name}: {job.state}"
