"""CPU threads: how many threads each command's torch uses, chosen from the cores nothing else is using.

torch's CPU work runs in OpenMP threads, one per core by default, and threads that wait for work spin on their core.
When another process (a second run, a browser, a test suite) holds one of those cores, every parallel region waits
for a thread that is not running: measured on 2 cores, two world trainings at torch's defaults ran 25x slower each
than one alone, while at one thread each they both kept the speed of one alone (bench/RESULTS.md, "CPU threads").
A passive wait policy avoids the collapse but made a small model's step twice as slow alone. So:

- a command uses the cores of its process's affinity that other processes leave free: every core alone (torch's
  fastest), fewer as soon as something else holds some (`busy_elsewhere`, sampled in the background from /proc/stat),
  and every core again when it ends. The count is taken again between training steps and between denoising steps
  (`refresh`);
- `--threads N` (or OMP_NUM_THREADS, when the flag is not given) is taken as it is;
- several workloads in one process (the page: a training, a scoring, a generation at once) divide those cores between
  them instead of each taking all of them (`workload`).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .errors import UsageError

RULE = "must be 0 (chosen from the free cores) or a number of CPU threads, e.g. 1 or 2"
SAMPLE_EVERY = 0.25  # seconds between two readings of the machine's CPU time
WINDOW = 4  # readings compared: the last second


def affinity() -> set[int]:
    """The cores this process may run on (its affinity: what taskset, a container or a Ray worker allows)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return set(range(os.cpu_count() or 1))


def cores() -> int:
    return len(affinity())


def env_threads() -> int:
    """OMP_NUM_THREADS when it is set to a whole number (its first level, as OpenMP reads '4,2'), else 0."""
    text = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(text) if text.isdigit() and int(text) > 0 else 0


def choose(requested: int) -> tuple[int, bool]:
    """Threads for one workload, and whether the user asked for them: --threads, else OMP_NUM_THREADS, else every
    core (of which it then uses the free ones)."""
    if requested < 0:
        raise UsageError(f"--threads {requested}: {RULE}")
    asked = requested or env_threads()
    return (asked, True) if asked else (cores(), False)


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


# What other processes take of this process's cores: CPU seconds of the machine minus this process's own, read every
# SAMPLE_EVERY seconds by a daemon thread while a chosen workload runs (a reading is a file read, about 0.1 ms).


def machine_busy_seconds(cpus: set[int]) -> float | None:
    """CPU seconds the cores `cpus` have spent on anything but idling since boot (/proc/stat), None off Linux."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        if not line.startswith("cpu"):
            continue
        name, *fields = line.split()
        if name[3:].isdigit() and int(name[3:]) in cpus:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
            ticks += user + nice + system + irq + softirq + steal
    return ticks / os.sysconf("SC_CLK_TCK")


def own_busy_seconds() -> float:
    """CPU seconds this process has used, all its threads."""
    t = os.times()
    return t.user + t.system


_readings: deque[tuple[float, float, float]] = deque(maxlen=WINDOW + 1)
_sampler: threading.Thread | None = None


def _sample_while_chosen() -> None:
    global _sampler
    cpus = affinity()
    while True:
        busy = machine_busy_seconds(cpus)
        with _lock:
            if busy is None or not any(not w.asked for w in _running):
                _sampler = None
                _readings.clear()
                return
            _readings.append((time.monotonic(), busy, own_busy_seconds()))
        time.sleep(SAMPLE_EVERY)


def _watch() -> None:
    """Start the background reading (with _lock held) unless it runs."""
    global _sampler
    if _sampler is None:
        _sampler = threading.Thread(target=_sample_while_chosen, name="dreambooth-cpu-load", daemon=True)
        _sampler.start()


def busy_elsewhere() -> float:
    """Cores' worth of CPU time other processes used over the last second of readings (0 until there are two)."""
    with _lock:
        if len(_readings) < 2:
            return 0.0
        (t0, busy0, own0), (t1, busy1, own1) = _readings[0], _readings[-1]
    return max(0.0, ((busy1 - busy0) - (own1 - own0)) / max(t1 - t0, 1e-6))


def free_cores() -> int:
    """The cores other processes leave this one: a core counts as taken when they used more than half of it."""
    n = cores()
    return max(1, min(n, int(n - busy_elsewhere() + 0.5)))


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
    """The user's count when they gave one; else a share of the free cores the user's counts leave."""
    if workload.asked:
        return workload.wanted
    free = free_cores()
    with _lock:
        chosen = [w for w in _running if not w.asked]
        left = free - sum(w.wanted for w in _running if w.asked)
        return shares([w.wanted for w in chosen], max(1, left))[chosen.index(workload)]


@contextmanager
def _wanting(this: Workload, wanted: int, asked: bool) -> Iterator[None]:
    """`this` wants `wanted` threads for a while (a command inside it), then what it wanted before."""
    before = this.wanted, this.asked
    this.wanted, this.asked = wanted, asked
    try:
        _set(this, _share_of(this))
        yield
    finally:
        this.wanted, this.asked = before
        _set(this, _share_of(this))


@contextmanager
def workload(requested: int) -> Iterator[int]:
    """Run one command's torch work in this thread with the threads chosen (`choose`), divided with the other
    workloads of the process; yields the count at the start. A command called inside another (bench -> train) stays
    the outer one's workload, with its own choice."""
    wanted, asked = choose(requested)
    outer: Workload | None = getattr(_here, "workload", None)
    if outer is not None:
        with _wanting(outer, wanted, asked):
            yield outer.count
        return
    import torch

    this, before = Workload(wanted, asked), torch.get_num_threads()
    with _lock:
        _running.append(this)
        if not asked:
            _watch()
    _here.workload = this
    try:
        _set(this, _share_of(this))
        yield this.count
    finally:
        _here.workload = None
        with _lock:
            _running.remove(this)
        torch.set_num_threads(before)  # the caller's thread as it was (the Python API, the page's threads)


def refresh() -> None:
    """Take this thread's share again (another process or workload started or ended): called between training
    steps and denoising steps, cheap."""
    this: Workload | None = getattr(_here, "workload", None)
    if this is not None:
        _set(this, _share_of(this))
