"""Resumable training state, written atomically, checked when read, and read without unpickling anything.

A checkpoint is a folder `checkpoints/step-000100/` with `state.safetensors` (LoRA weights and optimiser tensors)
and `state.json`: the step, optimiser hyper-parameters, LR-schedule position, the checksum of the tensors, the
run's identity (what must match to continue it) and its other settings (what may change on resume).
Everything random in training is derived from (seed, step), so no RNG state needs saving.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .. import atomic
from ..errors import TrainingError, UsageError

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"


def trainable(models: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Parameter]:
    return {f"{name}.{k}": p for name, m in models.items() if m is not None for k, p in m.named_parameters() if p.requires_grad}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save(checkpoints_dir: Path, step: int, models: dict, optimizer, lr_scheduler, keep: int = 2,
         identity: dict | None = None, settings: dict | None = None) -> Path:  # fmt: skip
    final = Path(checkpoints_dir) / f"step-{step:06d}"
    tmp = atomic.temp_dir_beside(final)
    tensors = {f"param.{k}": p.detach().cpu().contiguous() for k, p in trainable(models).items()}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for key, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim.{idx}.{key}"] = t.detach().cpu().contiguous()
    try:
        save_file(tensors, str(tmp / STATE_TENSORS))
        meta = {
            "step": step,
            "param_groups": opt["param_groups"],
            "lr_scheduler": {k: v for k, v in lr_scheduler.state_dict().items() if k != "lr_lambdas"},
            "bytes": (tmp / STATE_TENSORS).stat().st_size,
            "sha256": file_sha256(tmp / STATE_TENSORS),
            "identity": identity or {},
            "settings": settings or {},
        }
        (tmp / STATE_JSON).write_text(json.dumps(meta))
        atomic.replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune(Path(checkpoints_dir), keep)
    return final


def prune(checkpoints_dir: Path, keep: int) -> None:
    """Keep the `keep` newest intact checkpoints (never fewer than one); remove the others, damaged ones included.
    Runs after every save, so it checks sizes only: hashing every kept checkpoint each time would cost a read of
    all of them per save; the full check is made when one is resumed."""
    if not keep:
        return
    folders = sorted(checkpoints_dir.glob("step-*"))
    intact = [p for p in folders if problem(p, full=False) is None]
    kept = set(intact[-keep:])
    for old in folders:
        if old not in kept:
            shutil.rmtree(old, ignore_errors=True)


def remove_partial(checkpoints_dir: Path) -> None:
    """Folders a killed process left half written (their names start with a dot)."""
    for leftover in Path(checkpoints_dir).glob(".step-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def read_meta(path: Path) -> dict:
    return json.loads((path / STATE_JSON).read_text())


def problem(path: Path, full: bool = True) -> str | None:
    """Why the checkpoint at `path` cannot be used, or None when it is complete (sizes) and, with `full`, unchanged
    (checksum)."""
    try:
        meta = read_meta(path)
    except (OSError, ValueError):
        return f"{STATE_JSON} is missing or unreadable"
    tensors = path / STATE_TENSORS
    if not tensors.is_file():
        return f"{STATE_TENSORS} is missing"
    if full and "sha256" in meta and file_sha256(tensors) != meta["sha256"]:
        return f"{STATE_TENSORS} does not match its checksum"
    if "bytes" in meta and tensors.stat().st_size != meta["bytes"]:
        return f"{STATE_TENSORS} is {tensors.stat().st_size} bytes, not {meta['bytes']}"
    return None


def newest(checkpoints_dir: Path) -> Path | None:
    done = [p for p in sorted(Path(checkpoints_dir).glob("step-*")) if (p / STATE_JSON).is_file()]
    return done[-1] if done else None


def newest_intact(checkpoints_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint that passes its checks, and the newer ones that did not (with why)."""
    damaged: list[tuple[Path, str]] = []
    for path in reversed(sorted(Path(checkpoints_dir).glob("step-*"))):
        why = problem(path)
        if why is None:
            return path, damaged
        damaged.append((path, why))
    return None, damaged


def load(path: Path, models: dict, optimizer, lr_scheduler) -> int:
    """Restore weights, optimiser and schedule from `path`; return the step it was saved at."""
    tensors = load_file(str(path / STATE_TENSORS))
    meta = read_meta(path)
    params = trainable(models)
    missing = set(params) - {k[len("param.") :] for k in tensors if k.startswith("param.")}
    if missing:
        raise UsageError(
            f"--resume: checkpoint {path} lacks {len(missing)} LoRA weights (e.g. {sorted(missing)[0]}); it was made "
            f"with other LoRA settings: pass them, or --overwrite to start over"
        )
    with torch.no_grad():
        for k, p in params.items():
            if tensors[f"param.{k}"].shape != p.shape:
                raise UsageError(f"--resume: checkpoint {path} holds {k} of shape {tuple(tensors[f'param.{k}'].shape)}, not "
                                 f"{tuple(p.shape)}; it was made with other LoRA settings or another base model")  # fmt: skip
            p.copy_(tensors[f"param.{k}"])
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    lr_scheduler.load_state_dict({**lr_scheduler.state_dict(), **meta["lr_scheduler"]})
    return int(meta["step"])


def save_or_stop(ckpt_dir: Path, step: int, named: dict, optimizer, lr_scheduler, keep: int,
                 identity: dict | None = None, settings: dict | None = None) -> Path:  # fmt: skip
    """Save; when the disk refuses, stop training with one line saying what is kept."""
    try:
        return save(ckpt_dir, step, named, optimizer, lr_scheduler, keep, identity, settings)
    except OSError as e:
        previous = newest(ckpt_dir)
        kept = f"{previous} is intact" if previous else "no earlier checkpoint exists"
        raise TrainingError(
            f"could not write the checkpoint of step {step} in {ckpt_dir} ({e.strerror}); {kept}: "
            f"free space and run again with --resume"
        ) from None
