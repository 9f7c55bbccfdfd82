"""Resumable training state, written atomically, checked when read, and read without unpickling anything.

A checkpoint is a folder `checkpoints/step-000100/` with `state.safetensors` (LoRA weights and optimiser tensors)
and `state.json`: the step, the optimiser's state around its tensors (numbers, flags, nesting) and hyper-parameters,
LR-schedule position, fp16 loss scale, the checksum of the tensors, the run's identity (what must match to continue
it) and its other settings (what may change on resume).
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


PLAIN = (type(None), bool, int, float, str)  # what JSON holds as it is


def state_to_json(value, path: tuple, tensors: dict[str, torch.Tensor], names: dict[tuple, str]):
    """Optimiser state `value` (found at `path`) as JSON: each tensor moved into `tensors` under its path joined by
    dots and replaced by {"tensor": that name}; a dict as {"dict": [[key, value], ...]}, which keeps integer keys
    integers; a tuple as {"tuple": [...]}; lists, numbers, strings, booleans and None as they are.
    One tensor held in several places (8-bit AdamW shares its quantisation maps between parameters) is stored once,
    under the name `names` gives it, and read back shared: safetensors refuses to write memory twice."""
    if torch.is_tensor(value):
        view = (value.device, value.data_ptr(), value.dtype, tuple(value.shape), value.stride())
        if view in names:
            return {"tensor": names[view]}
        name = ".".join(str(k) for k in path)
        if name in tensors:
            raise ValueError(f"optimiser state {name}: two entries have this name once flattened")
        tensors[name], names[view] = value.detach().cpu().contiguous(), name
        return {"tensor": name}
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, PLAIN):
                raise TypeError(f"optimiser state {where(path)}: a key of type {type(key).__name__} cannot be saved")
        return {"dict": [[key, state_to_json(v, (*path, key), tensors, names)] for key, v in value.items()]}
    if isinstance(value, (list, tuple)):
        items = [state_to_json(v, (*path, i), tensors, names) for i, v in enumerate(value)]
        return {"tuple": items} if isinstance(value, tuple) else items
    if isinstance(value, PLAIN):
        return value
    raise TypeError(f"optimiser state {where(path)}: a {type(value).__name__} cannot be saved")


def where(path: tuple) -> str:
    """`path` as it would be indexed in Python, without the leading "optim": [0]['exp_avg']."""
    return "".join(f"[{k!r}]" for k in path[1:])


def state_from_json(value, tensors: dict[str, torch.Tensor]):
    """The optimiser state `state_to_json` wrote, with its tensors taken from `tensors`."""
    if isinstance(value, list):
        return [state_from_json(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "tensor" in value:
        return tensors[value["tensor"]]
    if "tuple" in value:
        return tuple(state_from_json(v, tensors) for v in value["tuple"])
    return {key: state_from_json(v, tensors) for key, v in value["dict"]}


def flat_optimizer_state(tensors: dict[str, torch.Tensor]) -> dict[int, dict]:
    """The optimiser state of checkpoints written before nesting was kept: tensors named `optim.<param>.<name>`."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    return state


def optimizer_kind(optimizer) -> str:
    """The optimiser's class, under accelerate's wrapper: its state fits only that class."""
    return type(getattr(optimizer, "optimizer", optimizer)).__name__


def ema_state(ema, names: list[str], tensors: dict[str, torch.Tensor]) -> dict:
    """diffusers' EMAModel state without pickle: each average as tensor `ema.<parameter name>`, the numbers (decay,
    step count, warmup settings) as JSON."""
    state = ema.state_dict()
    for name, shadow in zip(names, state["shadow_params"], strict=True):
        tensors[f"ema.{name}"] = shadow.detach().cpu().contiguous()
    return {k: v for k, v in state.items() if k != "shadow_params"}


def save(checkpoints_dir: Path, step: int, models: dict, optimizer, lr_scheduler, keep: int = 2,
         identity: dict | None = None, settings: dict | None = None, scaler=None, ema=None) -> Path:  # fmt: skip
    """Write the checkpoint of `step` and prune older ones. `scaler` is the fp16 loss scaler, when there is one;
    `ema` the moving average of the trained weights (--ema-decay), when there is one."""
    final = Path(checkpoints_dir) / f"step-{step:06d}"
    params = trainable(models)
    tensors = {f"param.{k}": p.detach().cpu().contiguous() for k, p in params.items()}
    averages = ema_state(ema, list(params), tensors) if ema is not None else None
    opt = optimizer.state_dict()
    optimizer_state = state_to_json(opt["state"], ("optim",), tensors, {})  # before the folder: a refusal leaves nothing
    tmp = atomic.temp_dir_beside(final)
    try:
        save_file(tensors, str(tmp / STATE_TENSORS))
        meta = {
            "step": step,
            "optimizer": optimizer_kind(optimizer),
            "optimizer_state": optimizer_state,
            "param_groups": opt["param_groups"],
            "lr_scheduler": {k: v for k, v in lr_scheduler.state_dict().items() if k != "lr_lambdas"},
            "scaler": scaler.state_dict() if scaler is not None else {},
            **({"ema": averages} if averages is not None else {}),
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


def load(path: Path, models: dict, optimizer, lr_scheduler, scaler=None, ema=None) -> int:
    """Restore weights, optimiser, schedule and, given the run's fp16 loss `scaler`, its scale, given its `ema`, the
    moving average, from `path`; return the step it was saved at."""
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
    if "optimizer_state" in meta:
        state = state_from_json(meta["optimizer_state"], tensors)
    else:
        state = flat_optimizer_state(tensors)
    # --optimizer is part of a run's identity, but adamw8bit means AdamW where bitsandbytes is not installed (and meant
    # AdamW on every CPU before); older checkpoints do not name their optimiser, AdamW's state does
    saved = meta.get("optimizer") or ("AdamW" if any("exp_avg" in per_param for per_param in state.values()) else None)
    if saved and saved != optimizer_kind(optimizer):
        raise UsageError(
            f"--resume: checkpoint {path} holds the state of {saved} but this run uses {optimizer_kind(optimizer)} "
            f"(--optimizer adamw8bit is AdamW8bit where bitsandbytes is installed, AdamW where not); continue it where that "
            f"matches, or pass --overwrite to start over"
        )
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except ValueError:  # torch: "loaded state dict contains a parameter group that doesn't match the size of ..."
        raise UsageError(
            f"--resume: checkpoint {path} holds optimiser state for another set of LoRA weights (an earlier version "
            f"also put adapters where no gradient reaches, e.g. SDXL's first text encoder's last layer); pass "
            f"--overwrite to start over"
        ) from None
    lr_scheduler.load_state_dict({**lr_scheduler.state_dict(), **meta["lr_scheduler"]})
    if ema is not None:
        if "ema" not in meta:
            raise UsageError(
                f"--resume: checkpoint {path} holds no moving average of the weights (it was trained without "
                f"--ema-decay); pass --ema-decay 0 to continue it, or --overwrite to start over"
            )
        device = next(iter(params.values())).device if params else torch.device("cpu")
        ema.load_state_dict({**meta["ema"], "shadow_params": [tensors[f"ema.{k}"] for k in params]})
        ema.to(device)
    # a checkpoint saved without fp16 holds no scale: the scaler then starts from its initial one
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    return int(meta["step"])


def save_or_stop(ckpt_dir: Path, step: int, named: dict, optimizer, lr_scheduler, keep: int,
                 identity: dict | None = None, settings: dict | None = None, scaler=None, ema=None) -> Path:  # fmt: skip
    """Save; when the disk refuses, stop training with one line saying what is kept."""
    try:
        return save(ckpt_dir, step, named, optimizer, lr_scheduler, keep, identity, settings, scaler, ema)
    except OSError as e:
        previous = newest(ckpt_dir)
        kept = f"{previous} is intact" if previous else "no earlier checkpoint exists"
        raise TrainingError(
            f"could not write the checkpoint of step {step} in {ckpt_dir} ({e.strerror}); {kept}: "
            f"free space and run again with --resume"
        ) from None
