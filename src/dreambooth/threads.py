"""CPU threads: how many threads each command's torch uses, chosen for its model and for the other work in the process.

OpenMP threads that wait for work spin on their core. When another process (a second run, a browser, a test suite)
holds that core, every parallel region of a small model waits for a descheduled thread: measured on 2 cores, two
world trainings at torch's defaults ran 25x slower each than one alone, while at one thread each they both ran at the
speed of one alone (bench/RESULTS.md, "CPU threads"). So:

- the embedded models (the world's and the tiny test models) train on one thread: their layers are too small for a
  second thread to pay for its wake-ups (measured: as fast or faster on one); they draw images (batches of tens) on
  every core, where a second thread pays (`sampling`);
- real-size models use every core the process may run on;
- `--threads N` (or OMP_NUM_THREADS, when the flag is not given) overrides the choice;
- several workloads in one process (the page: a training, a scoring, a generation at once) divide the cores between
  them instead of each taking all of them (`workload`, `refresh`).

OpenMP's wait policy (read once, when torch loads) is set by the command line before torch is imported: passive for the
embedded models and the page, OpenMP's own for real-size models, where a passive one made the SD 1.5 architecture's
step 8-40 % slower alone (`prepare_environment`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .errors import UsageError

SMALL_MODEL_THREADS = 1
RULE = "must be 0 (chosen for the model) or a number of CPU threads, e.g. 1 or 2"


def wait_passively(command: str, model: str | None) -> bool:
    """Whether this command's OpenMP threads should sleep as soon as their work is done (OMP_WAIT_POLICY=PASSIVE)
    rather than spin: yes for the embedded models, whose drawing on every core then keeps its speed beside other work
    (measured: the world's 32 samples in 9.5-9.9 s alone as with spinning threads, 14-21 s beside a busy process
    against 36-39) and for the page, whose workloads share the cores; no for a real-size model, whose step it made
    8-40 % slower alone."""
    return command in ("demo", "ui") or (command in ("train", "generate", "bench") and model in embedded_names())


def prepare_environment(command: str, model: str | None) -> None:
    """Set the wait policy for `command` unless the user set one. OpenMP reads it when torch loads its runtime, so
    call this before torch is imported (the CLI does, before any command runs); later it changes only child
    processes."""
    if wait_passively(command, model):
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def embedded_names() -> tuple[str, ...]:
    from .models import EMBEDDED

    return tuple(EMBEDDED)


def cores() -> int:
    """The cores this process may run on (its affinity: what taskset, a container or a Ray worker allows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def env_threads() -> int:
    """OMP_NUM_THREADS when it is set to a whole number (its first level, as OpenMP reads '4,2'), else 0."""
    text = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(text) if text.isdigit() and int(text) > 0 else 0


def is_small(model: str) -> bool:
    """The embedded models (tiny test models, the world) are small enough that one thread is their fastest."""
    return model in embedded_names()


def choose(requested: int, model: str) -> tuple[int, bool]:
    """Threads for one workload, and whether the user asked for them: --threads, else OMP_NUM_THREADS, else one for
    an embedded model and every core otherwise."""
    if requested < 0:
        raise UsageError(f"--threads {requested}: {RULE}")
    asked = requested or env_threads()
    if asked:
        return asked, True
    return (SMALL_MODEL_THREADS if is_small(model) else cores()), False


def shares(wanted: list[int], total: int) -> list[int]:
    """Divide `total` cores between workloads that want `wanted` threads each: the smallest wants are met first, the
    rest split evenly; every workload keeps at least one thread."""
    out = [0] * len(wanted)
    left = total
    order = sorted(range(len(wanted)), key=lambda i: wanted[i])
    for k, i in enumerate(order):
        fair = max(1, left // (len(wanted) - k))
        out[i] = min(wanted[i], fair)
        left = max(0, left - out[i])
    return out


@dataclass(eq=False)  # each workload is itself: two with the same wants are still two
class Workload:
    wanted: int
    asked: bool = False  # the user's count: taken as it is, not divided
    count: int = 0  # the threads in force in its thread


_lock = threading.Lock()
_running: list[Workload] = []
_here = threading.local()


def _set(workload: Workload, count: int) -> None:
    import torch

    if count != workload.count:
        torch.set_num_threads(count)  # for the calling thread's parallel regions (OpenMP keeps it per thread)
        workload.count = count


def _share_of(workload: Workload) -> int:
    """The user's count when they gave one; else a share of the cores the user's counts leave."""
    if workload.asked:
        return workload.wanted
    with _lock:
        chosen = [w for w in _running if not w.asked]
        left = cores() - sum(w.wanted for w in _running if w.asked)
        return shares([w.wanted for w in chosen], max(1, left))[chosen.index(workload)]


@contextmanager
def _wanting(this: Workload, wanted: int, asked: bool) -> Iterator[None]:
    """`this` wants `wanted` threads for a while (a command inside it, a drawing), then what it wanted before."""
    before = this.wanted, this.asked
    this.wanted, this.asked = wanted, asked
    try:
        _set(this, _share_of(this))
        yield
    finally:
        this.wanted, this.asked = before
        _set(this, _share_of(this))


@contextmanager
def workload(requested: int, model: str) -> Iterator[int]:
    """Run one command's torch work in this thread with the threads chosen for `model`, divided with the other
    workloads of the process; yields the count. A command called inside another (bench -> train) stays the outer
    one's workload, with its own model's choice."""
    wanted, asked = choose(requested, model)
    outer: Workload | None = getattr(_here, "workload", None)
    if outer is not None:
        with _wanting(outer, wanted, asked):
            yield outer.count
        return
    import torch

    this, before = Workload(wanted, asked), torch.get_num_threads()
    with _lock:
        _running.append(this)
    _here.workload = this
    try:
        _set(this, _share_of(this))
        yield this.count
    finally:
        _here.workload = None
        with _lock:
            _running.remove(this)
        torch.set_num_threads(before)  # the caller's thread as it was (the Python API, the page's threads)


@contextmanager
def sampling() -> Iterator[None]:
    """Drawing images: batches of tens of images, large enough that every core pays off even on a small model
    (measured: the world's 32 samples in 10 s on 2 threads, 15-17 s on one). So a workload that chose one thread for
    its model's training steps draws on its share of every core; a count the user gave stays as it is."""
    this: Workload | None = getattr(_here, "workload", None)
    if this is None or this.asked:
        yield
        return
    with _wanting(this, max(this.wanted, cores()), False):
        yield


def refresh() -> None:
    """Take this thread's share again (another workload started or ended): called between steps, cheap."""
    this: Workload | None = getattr(_here, "workload", None)
    if this is not None:
        _set(this, _share_of(this))
