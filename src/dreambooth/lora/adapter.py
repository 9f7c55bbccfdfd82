"""LoRA adapters (peft) on a model: add them, switch them off to run the frozen base, find a module by path."""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

import torch

from ..errors import UsageError

ADAPTER = "subject"


def add_lora(
    model: Any,
    rank: int,
    alpha: float,
    dropout: float,
    targets: list[str],
    exclude: str | None = None,
    dora: bool = False,
    kind: str = "lora",
    lokr_factor: int = -1,
) -> list[torch.nn.Parameter]:
    """Freeze `model`, attach an adapter of `kind` to `targets` (but not to modules matching the regex `exclude`),
    return the new trainable parameters (fp32). With `dora`, the LoRA is DoRA (Liu et al. 2024, peft's `use_dora`):
    each adapted layer also learns the magnitude of its weight's columns (`lora_magnitude_vector`). `kind` lokr or
    loha: LyCORIS' LoKr / LoHa through peft (`adapter_config`)."""
    model.requires_grad_(False)
    if targets == ["all-linear"]:  # peft expands this preset for transformers' models only
        targets = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    else:
        targets = layer_targets(model, targets)
    config = adapter_config(kind, rank, alpha, dropout, targets, exclude, dora, lokr_factor)
    try:
        model.add_adapter(config)
    except ValueError as e:
        raise UsageError(f"--target-modules {' '.join(targets)}: {str(e).splitlines()[0]}; name modules the model has") from None
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()  # fp32 master weights even when the base runs in half precision
    return params


CONTAINERS = (torch.nn.ModuleList, torch.nn.ModuleDict, torch.nn.Sequential)


def layer_targets(model: Any, targets: list[str]) -> list[str]:
    """`targets` as peft is to read them (a name matches the modules whose path ends with it): a name that also ends
    the path of a container, which peft cannot adapt, stands for the layers among its matches, by their paths
    (FLUX.2's `attn.to_out` is the single blocks' output layer, and the joint blocks' list of theirs)."""
    out = []
    for target in targets:
        named = [(name, m) for name, m in model.named_modules() if name == target or name.endswith("." + target)]
        if any(isinstance(m, CONTAINERS) for _, m in named):
            out += [name for name, m in named if not isinstance(m, CONTAINERS)]
        else:
            out.append(target)
    return out


def adapter_config(
    kind: str,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    targets: list[str] | None = None,
    exclude: str | None = None,
    dora: bool = False,
    lokr_factor: int = -1,
):
    """peft's config of an adapter of `kind` (lora, lokr, loha). LoKr and LoHa start from a zero update, as LoRA
    does: peft's default initialisation zeroes one factor (LoKr's first, LoHa's second up)."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    # peft annotates alpha as int; a float alpha is what the user asked for, and peft computes with it as given
    if kind == "lokr":
        return LoKrConfig(r=rank, alpha=alpha or rank, target_modules=targets, exclude_modules=exclude,  # type: ignore[arg-type]
                          decompose_factor=lokr_factor)  # fmt: skip
    if kind == "loha":
        return LoHaConfig(r=rank, alpha=alpha or rank, target_modules=targets, exclude_modules=exclude)  # type: ignore[arg-type]
    return LoraConfig(
        r=rank,
        lora_alpha=alpha or rank,  # type: ignore[arg-type]
        lora_dropout=dropout,
        init_lora_weights="gaussian",
        target_modules=targets,
        exclude_modules=exclude,
        use_dora=dora,
    )


_TUNER_LAYERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tuner_layers(model) -> list:
    """peft's adapter-carrying layers of `model`, listed once per set of adapters. diffusers' and transformers'
    disable_adapters walk every module and check peft's version on each call: about 4 % of a base-prediction
    step on the world model."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    key = tuple(model.peft_config)
    cached = _TUNER_LAYERS.get(model)
    if cached is None or cached[0] != key:
        cached = _TUNER_LAYERS[model] = (key, [m for m in model.modules() if isinstance(m, BaseTunerLayer)])
    return cached[1]


@contextlib.contextmanager
def adapters_off(*models):
    """Run the frozen base model: LoRA adapters of `models` (those that have any) switched off."""
    layers = [layer for m in models if getattr(m, "peft_config", None) for layer in tuner_layers(m)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def module_path(model: torch.nn.Module, path: str) -> str | None:
    """How `model` names the module a LoRA file calls `path`, allowing for CLIP's `text_model.` prefix, which
    transformers 5 drops and released checkpoints keep; None when it has no such module."""
    for candidate in (path, path.removeprefix("text_model."), "text_model." + path):
        try:
            model.get_submodule(candidate)
        except AttributeError:
            continue
        return candidate
    return None


def find_module(model: torch.nn.Module, path: str):
    """The module of `model` a LoRA file calls `path` (see `module_path`), or None."""
    found = module_path(model, path)
    return None if found is None else model.get_submodule(found)
