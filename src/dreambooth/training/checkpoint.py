"""Resumable training state, written atomically and read without unpickling anything.

A checkpoint is a folder `checkpoints/step-000100/` with `state.safetensors` (LoRA weights and
optimiser tensors) and `state.json` (step, optimiser hyper-parameters, LR-schedule position).
Everything random in training is derived from (seed, step), so no RNG state needs saving.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .. import atomic
from ..errors import TrainingError

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"


def trainable(models: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Parameter]:
    return {f"{name}.{k}": p for name, m in models.items() if m is not None for k, p in m.named_parameters() if p.requires_grad}


def save(checkpoints_dir: Path, step: int, models: dict, optimizer, lr_scheduler, keep: int = 2) -> Path:
    final = Path(checkpoints_dir) / f"step-{step:06d}"
    tmp = atomic.temp_dir_beside(final)
    tensors = {f"param.{k}": p.detach().cpu().contiguous() for k, p in trainable(models).items()}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for key, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim.{idx}.{key}"] = t.detach().cpu().contiguous()
    meta = {
        "step": step,
        "param_groups": opt["param_groups"],
        "lr_scheduler": {k: v for k, v in lr_scheduler.state_dict().items() if k != "lr_lambdas"},
    }
    try:
        save_file(tensors, str(tmp / STATE_TENSORS))
        (tmp / STATE_JSON).write_text(json.dumps(meta))
        atomic.replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in sorted(Path(checkpoints_dir).glob("step-*"))[:-keep] if keep else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_partial(checkpoints_dir: Path) -> None:
    """Folders a killed process left half written (their names start with a dot)."""
    for leftover in Path(checkpoints_dir).glob(".step-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def newest(checkpoints_dir: Path) -> Path | None:
    done = [p for p in sorted(Path(checkpoints_dir).glob("step-*")) if (p / STATE_JSON).is_file()]
    return done[-1] if done else None


def load(path: Path, models: dict, optimizer, lr_scheduler) -> int:
    """Restore weights, optimiser and schedule from `path`; return the step it was saved at."""
    tensors = load_file(str(path / STATE_TENSORS))
    meta = json.loads((path / STATE_JSON).read_text())
    params = trainable(models)
    missing = set(params) - {k[len("param.") :] for k in tensors if k.startswith("param.")}
    if missing:
        raise ValueError(
            f"checkpoint {path} lacks {len(missing)} LoRA weights (e.g. {sorted(missing)[0]}); it was made with other LoRA settings"
        )
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(tensors[f"param.{k}"])
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    lr_scheduler.load_state_dict({**lr_scheduler.state_dict(), **meta["lr_scheduler"]})
    return int(meta["step"])


def save_or_stop(ckpt_dir: Path, step: int, named: dict, optimizer, lr_scheduler, keep: int) -> Path:
    """Save; when the disk refuses, stop training with one line saying what is kept."""
    try:
        return save(ckpt_dir, step, named, optimizer, lr_scheduler, keep)
    except OSError as e:
        previous = newest(ckpt_dir)
        kept = f"{previous} is intact" if previous else "no earlier checkpoint exists"
        raise TrainingError(
            f"could not write the checkpoint of step {step} in {ckpt_dir} ({e.strerror}); {kept}: "
            f"free space and run again with --resume"
        ) from None
