"""What one fleet task does in its worker: a subject's training (the same `dreambooth.train` call as the command line)
or one class-bank entry, with the worker's output in a log file and any error as one line in the result.

Nothing here imports Ray: the tasks are plain functions that `fleet.driver` hands to Ray, and a test may call them."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path

from .. import atomic
from ..config import TrainConfig
from ..errors import TrainingError, UsageError
from . import plan, report


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:500]


@contextlib.contextmanager
def logged(path: Path):
    """The task's output (train's progress lines and bars) into `path`, appended: a retried task's log continues."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8", buffering=1) as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} on {socket.gethostname()}", flush=True)
        yield f


def announce(out: Path) -> None:
    """Where this attempt runs (the driver reads it to show `running`, and a user to find the process)."""
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "gpus": gpu_ids()}
    atomic.write_text(out / report.TASK_NAME, json.dumps(info) + "\n")


def gpu_ids() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def train_subject(cfg: TrainConfig, bank: dict | None = None) -> dict:
    """One subject's run, continued from its checkpoints when it has some (a retried task, a rerun fleet). Returns its
    row's fields: state done with the LoRA, loss and scores, or failed with the one-line error."""
    from ..evaluation.validation_scores import validation_scorer
    from ..training.loop import train

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    announce(out)
    started = time.time()
    if bank and bank.get("error"):
        return {"state": "failed", "error": f"class images: {bank['error']}", "seconds": 0.0}
    with logged(out / report.LOG_NAME) as log:
        try:
            # what `dreambooth.train` does: the scorer of --validation-prompts handed in
            train(dataclasses.replace(cfg, resume=plan.started(cfg)), score=validation_scorer(cfg))
        except (UsageError, TrainingError) as e:
            print(f"error: {e}", file=log, flush=True)
            return {"state": "failed", "error": one_line(e), "seconds": round(time.time() - started, 3)}
        except Exception as e:  # a fault of the tool, not of the input: the row says what, the log has the traceback
            traceback.print_exc(file=log)
            return {"state": "failed", "error": f"{type(e).__name__}: {one_line(e)}", "seconds": round(time.time() - started, 3)}
    return {"state": "done", "error": "", "seconds": round(time.time() - started, 3), **report.run_files(out)}


def make_bank(cfg: TrainConfig, log: str) -> dict:
    """Draw the class images `cfg` asks for into the bank (the folder its run would read), as `train` would before its
    first step: the subjects that share the entry then find every image there."""
    from .. import threads

    with logged(Path(log)), threads.workload(cfg.threads):
        try:
            from ..models import describe, load_pipeline, load_vae
            from ..training.setup import class_image_precision, class_photos, make_accelerator, resolved

            accelerator = make_accelerator(cfg)
            pipe = load_pipeline(cfg.model, allow_pickle=cfg.allow_pickle)
            if cfg.vae:
                pipe.vae = load_vae(cfg.vae)
            full = resolved(cfg, describe(pipe, cfg.model), class_image_precision(accelerator.device))
            made = class_photos(full, pipe, accelerator)
            return {"error": "", "images": len(made), "class_dir": full.class_dir}
        except (UsageError, TrainingError) as e:
            return {"error": one_line(e)}
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            return {"error": f"{type(e).__name__}: {one_line(e)}"}


def bench_subject(cfg, subject: str, bank: dict | None = None) -> dict:
    """One subject of `dreambooth bench --fleet`: its summary row, or the one-line error that stopped it."""
    from ..evaluation.bench import bench_subject as run_one

    if bank and bank.get("error"):
        return {"error": f"class images: {bank['error']}"}
    with logged(Path(cfg.output_dir).expanduser() / subject / report.LOG_NAME) as log:
        try:
            return {"row": run_one(cfg, subject)}
        except (UsageError, TrainingError) as e:
            print(f"error: {e}", file=log, flush=True)
            return {"error": one_line(e)}
        except Exception as e:
            traceback.print_exc(file=log)
            return {"error": f"{type(e).__name__}: {one_line(e)}"}
