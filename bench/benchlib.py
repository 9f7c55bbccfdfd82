"""Shared pieces of the bench scripts: machine facts, and running a command while timing its
progress bars from outside.

A training job is run as a child process. Its combined stdout/stderr is read as it is written;
every tqdm refresh ("desc:  12%|...| 36/300 [...]") is stamped with the time its first byte
arrived. From those (time, step) pairs the harness derives the phases of the job (class-image
generation, training, what comes after) and the steady-state step rate, without touching the
code under test. Peak memory and CPU time come from os.wait4(), i.e. the same `struct rusage`
that resource.getrusage(RUSAGE_CHILDREN) reports, but for that one child.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE_SUBJECT = REPO / "src" / "dreambooth" / "assets" / "sample_subject" / "dog"

# "training:  12%|█▏   | 36/300 [00:20<02:31,  1.74step/s, loss=...]"  (also "Steps: ...", "class images: ...")
BAR = re.compile(r"(?P<desc>[^\r\n|]*?):\s+(?P<pct>\d+)%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)")


# ---------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return f"{line.split('=', 1)[1].strip(chr(34))} ({platform.system()} {platform.release()})"
    except OSError:
        pass
    return platform.platform()


def loadavg() -> tuple[float, float, float] | None:
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except OSError:
        return None


PROBE = r"""
import json, sys, platform
from importlib import metadata
out = {"python": platform.python_version(), "executable": sys.executable}
for name in ["torch", "torchvision", "diffusers", "transformers", "peft", "accelerate", "safetensors", "numpy", "dreambooth"]:
    try:
        out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        out[name] = None
try:
    import torch
    out["torch_threads"] = torch.get_num_threads()
    out["cuda"] = torch.cuda.is_available()
    out["cuda_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    out["cuda_runtime"] = torch.version.cuda
except Exception as e:
    out["torch_error"] = repr(e)
print("PROBE" + json.dumps(out))
"""


def probe_python(python: str, env: dict | None = None) -> dict:
    """Python and library versions as seen by the interpreter that will run the job."""
    res = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    for line in res.stdout.splitlines():
        if line.startswith("PROBE"):
            return json.loads(line[5:])
    return {"error": (res.stderr or res.stdout).strip()[-500:]}


def machine_info() -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "ram_gib": round(ram_gib(), 1),
        "os": os_name(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def describe_env(machine: dict, versions: dict) -> str:
    v = versions
    lines = [
        f"machine : {machine['cpu']}, {machine['cores']} cores ({machine['cores_usable']} usable), {machine['ram_gib']} GiB RAM",
        f"os      : {machine['os']}",
        f"python  : {v.get('python')} ({v.get('executable')})",
        "versions: "
        + ", ".join(
            f"{k} {v.get(k)}" for k in ["torch", "torchvision", "diffusers", "transformers", "peft", "accelerate"] if v.get(k)
        ),
        f"torch   : {v.get('torch_threads')} intra-op threads; CUDA: {v.get('cuda_device') or 'none'}",
        f"date    : {machine['date']}",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- running a job


@dataclass
class Run:
    cmd: list[str]
    rc: int = 0
    wall: float = 0.0
    max_rss_mib: float = 0.0
    cpu_s: float = 0.0
    load_before: tuple | None = None
    load_after: tuple | None = None
    # (seconds since start, one \r- or \n-separated segment, CPU seconds the child had used by then,
    #  CPU seconds the whole machine had been busy by then)
    events: list[tuple[float, str, float | None, float | None]] = field(default_factory=list)
    others_cores: float | None = None  # cores kept busy by other processes, on average over the run
    log_path: str = ""

    def bars(self, desc: str) -> list[tuple]:
        """(time, n, total, child CPU s, machine busy s) of every refresh of the bar whose description is `desc`."""
        out = []
        for t, text, cpu, busy in self.events:
            m = BAR.search(text)
            if m and m.group("desc").strip() == desc:
                out.append((t, int(m.group("n")), int(m.group("total")), cpu, busy))
        return out

    def first_line(self, pattern: str) -> float | None:
        rx = re.compile(pattern)
        for t, text, *_ in self.events:
            if rx.search(text):
                return t
        return None

    def tail(self, n: int = 30) -> str:
        return "\n".join(text for _, text, *_ in self.events[-n:])


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process, all its threads (from /proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return None


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores have spent not idle since boot (from /proc/stat)."""
    try:
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return (sum(v[:8]) - v[3] - v[4]) / CLOCK_TICKS  # user..steal, less idle and iowait
    except (OSError, ValueError, IndexError):
        return None


def cuda_peak_wrapper(run_line: str) -> str:
    """`python -c` code that runs `run_line` (a runpy call) and prints CUDA's peak allocation at exit."""
    return (
        "import atexit, runpy, sys\n"
        "def _peak():\n"
        "    t = sys.modules.get('torch')\n"
        "    if t is not None and t.cuda.is_available() and t.cuda.is_initialized():\n"
        "        print(f'BENCH cuda_max_allocated_bytes={t.cuda.max_memory_allocated()}', flush=True)\n"
        "atexit.register(_peak)\n" + run_line + "\n"
    )


def cuda_peak(run: "Run") -> float | None:
    """MiB, as printed by a cuda_peak_wrapper child; None when it printed none."""
    for _, text, *_ in run.events:
        m = re.search(r"BENCH cuda_max_allocated_bytes=(\d+)", text)
        if m:
            return int(m.group(1)) / 2**20
    return None


def run_timed(cmd: list[str], log_path: Path, env: dict | None = None, cwd: str | Path | None = None, echo: bool = False) -> Run:
    """Run `cmd`; stamp each output segment with the time its first byte was read."""
    run = Run(cmd=list(cmd), log_path=str(log_path), load_before=loadavg())
    full_env = dict(os.environ if env is None else env)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    log = open(log_path, "wb")
    busy0 = machine_busy_seconds()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, cwd=cwd, bufsize=0)
    fd = proc.stdout.fileno()
    pending, pending_t, pending_cpu, pending_busy = b"", None, None, None
    while True:
        chunk = os.read(fd, 65536)
        now = time.monotonic() - start
        cpu, busy = cpu_seconds(proc.pid), machine_busy_seconds()
        if not chunk:
            break
        log.write(chunk)
        if echo:
            sys.stderr.buffer.write(chunk)
            sys.stderr.flush()
        for piece in re.split(rb"([\r\n])", chunk):
            if piece in (b"\r", b"\n"):
                if pending:
                    run.events.append((pending_t, pending.decode("utf-8", "replace"), pending_cpu, pending_busy))
                pending, pending_t, pending_cpu, pending_busy = b"", None, None, None
            elif piece:
                if not pending:
                    pending_t, pending_cpu, pending_busy = now, cpu, busy
                pending += piece
    if pending:
        run.events.append((pending_t, pending.decode("utf-8", "replace"), pending_cpu, pending_busy))
    _, status, usage = os.wait4(proc.pid, 0)
    run.wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    run.rc = proc.returncode
    run.max_rss_mib = usage.ru_maxrss / 1024  # Linux: KiB
    run.cpu_s = usage.ru_utime + usage.ru_stime
    busy1 = machine_busy_seconds()
    if busy0 is not None and busy1 is not None and run.wall > 0:
        run.others_cores = max(0.0, (busy1 - busy0 - run.cpu_s) / run.wall)
    run.load_after = loadavg()
    log.close()
    return run


# ---------------------------------------------------------------- figures from the progress bars


def span(bar: list[tuple]) -> tuple[float, float] | None:
    """(first refresh, first refresh showing n == total) of a bar."""
    if not bar:
        return None
    done = [t for t, n, total, *_ in bar if n >= total]
    return bar[0][0], (done[0] if done else bar[-1][0])


def first_seen(bar: list[tuple], with_cpu: bool = False) -> dict:
    """step -> time it was first shown (a bar may redraw the same step, e.g. to add the loss);
    with_cpu: step -> (time, child CPU seconds then, machine busy seconds then)."""
    seen: dict = {}
    for t, n, _, cpu, busy in bar:
        seen.setdefault(n, (t, cpu, busy) if with_cpu else t)
    return seen


def steady_rate(bar: list[tuple], warmup: int) -> dict:
    """Steady-state steps/s = (N2 - N1) / (T2 - T1): N1 = first step shown at or after `warmup`, N2 = the last.

    Also the median of 10-step windows (less sensitive to a burst of load from other processes), and
    the child's CPU seconds per step over N1..N2 (its CPU share shows how much of the machine it got)."""
    seen = first_seen(bar)
    with_cpu = first_seen(bar, with_cpu=True)
    steps = sorted(n for n in seen if n >= warmup)
    if len(steps) < 2:
        return {}
    n1, n2 = steps[0], steps[-1]
    rate = (n2 - n1) / (seen[n2] - seen[n1])
    c1, c2 = with_cpu[n1][1], with_cpu[n2][1]
    cpu = (c2 - c1) if c1 is not None and c2 is not None else None
    b1, b2 = with_cpu[n1][2], with_cpu[n2][2]
    others = (b2 - b1 - cpu) / (seen[n2] - seen[n1]) if cpu is not None and b1 is not None and b2 is not None else None
    windows = []
    for a in steps:
        b = a + 10
        if b in seen and seen[b] > seen[a]:
            windows.append(10 / (seen[b] - seen[a]))
    return {
        "n1": n1,
        "n2": n2,
        "t1": round(seen[n1], 3),
        "t2": round(seen[n2], 3),
        "steps_per_s": rate,
        "median_10step_window_steps_per_s": statistics.median(windows) if windows else None,
        "cpu_s_per_step": cpu / (n2 - n1) if cpu is not None else None,
        "cpu_cores_busy": cpu / (seen[n2] - seen[n1]) if cpu is not None else None,
        "other_processes_cores": max(0.0, others) if others is not None else None,
    }


def fmt_cmd(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def fmt_load(load) -> str:
    return "n/a" if not load else " ".join(f"{x:.2f}" for x in load)


def write_json(path: str | Path | None, data: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def reference_flags(
    instance_dir,
    instance_prompt: str,
    class_prompt: str,
    num_class_images: int,
    steps: int,
    resolution: int = 64,
    mixed_precision: str = "no",
) -> list[str]:
    """The reference command's settings, in the flag names both tools accept: the same run for each."""
    return [
        "--instance_data_dir",
        str(instance_dir),
        "--instance_prompt",
        instance_prompt,
        "--class_prompt",
        class_prompt,
        "--resolution",
        str(resolution),
        "--train_batch_size",
        "1",
        "--with_prior_preservation",
        "--num_class_images",
        str(num_class_images),
        "--train_text_encoder",
        "--rank",
        "16",
        "--max_train_steps",
        str(steps),
        "--learning_rate",
        "5e-4",
        "--seed",
        "0",
        "--mixed_precision",
        mixed_precision,
    ]


def add_run_flags(p) -> None:
    """The flags both training benchmarks share: the reference run's size and where its files go."""
    p.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda"), help="cpu hides GPUs from the jobs (CUDA_VISIBLE_DEVICES='')"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 20 steps, 4 class images")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--resolution", type=int, default=64, help="512 for an SD 1.5-shaped model (bench/save_sd15_model.py)")
    p.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"), help="both tools' --mixed_precision")
    p.add_argument("--num-class-images", type=int, default=100)
    p.add_argument(
        "--warmup", type=int, default=None, help="steps left out of the steady-state rate (default: 10%% of --steps, at least 5)"
    )
    p.add_argument("--instance-dir", default=str(SAMPLE_SUBJECT), help="subject photos (default: the bundled dog)")
    p.add_argument(
        "--workdir", default="", help="folder for outputs and logs (default: a temporary folder, removed unless --keep)"
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    p.add_argument("--json", default="", help="also write every figure to this JSON file")
    p.add_argument("--echo", action="store_true", help="show the jobs' own output as they run")


def settle_run_flags(args) -> None:
    if args.quick:
        args.steps, args.num_class_images = 20, 4
    if args.warmup is None:
        args.warmup = max(5, args.steps // 10)
    args.images_per_step = 1 + 1  # batch 1 + 1 class image
