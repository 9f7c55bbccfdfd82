"""OUTPUT_DIR/progress.jsonl: one line per loss the loop reads (every 10 steps, the last step, each checkpoint), so
a run can be followed from outside the process that trains it: the web page shows the loss curve and time left of
runs it started and of runs started from the command line into its workspace, also after it restarts."""

from __future__ import annotations

import json
import time
from pathlib import Path

PROGRESS_NAME = "progress.jsonl"


def append(out: Path, step: int, max_steps: int, loss: float, seconds: float) -> None:
    # Appended, not rewritten: one short line per write, and the reader skips a line cut off by a crash.
    line = {"step": step, "max_steps": max_steps, "loss": round(float(loss), 6), "seconds": round(seconds, 3),
            "time": round(time.time(), 3)}  # fmt: skip
    try:
        with open(Path(out) / PROGRESS_NAME, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
    except OSError:
        pass  # the log is only for watching: a full disk is the checkpoint's to report (it stops the run in one line)


def read(out: Path) -> list[dict]:
    """The run's progress lines, oldest first. A resumed run repeats the steps after its checkpoint: a step at or
    below an earlier one drops the earlier lines from that step on, so the curve is the one the LoRA followed."""
    try:
        text = (Path(out) / PROGRESS_NAME).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    lines: list[dict] = []
    for raw in text.splitlines():
        try:
            entry = json.loads(raw)
            step, loss = int(entry["step"]), float(entry["loss"])
        except (ValueError, KeyError, TypeError):
            continue
        lines = [e for e in lines if e["step"] < step]
        lines.append({**entry, "step": step, "loss": loss})
    return lines
