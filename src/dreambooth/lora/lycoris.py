"""LoKr and LoHa (LyCORIS' adapters, trained through peft): the diffusers-side file, the kohya-style LyCORIS file that
ComfyUI, A1111 / Forge load, and loading either into a pipeline.

Both layouts name a module's factors alike (`lokr_w1`, `lokr_w2` or `lokr_w2_a` / `lokr_w2_b` when a factor is
rank-decomposed; `hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b`). They differ in module names (the model's own in
the diffusers-side file, kohya's `lora_unet_…` in the other) and in scale: peft applies alpha / rank to every
module, while LyCORIS' readers apply alpha / rank to a LoKr only when one of its factors is decomposed (a LoKr of
two full factors applies its product as it is). A LoKr of two full factors trained at alpha != rank is therefore
written with alpha / rank multiplied into `lokr_w1`. diffusers' `load_lora_weights` reads neither file for the
families this tool trains (it reads LoKr for some transformer pipelines only, LoHa for none), so `generate` loads
both through peft itself."""

from __future__ import annotations

import collections
import json
from typing import Any

import torch

from ..errors import UsageError

PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b",
         "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")  # fmt: skip
PEFT_TYPES = {"LOKR": "lokr", "LOHA": "loha"}


def split_part(key: str) -> tuple[str, str] | None:
    """'unet.<module>.lokr_w1' -> ('unet.<module>', 'lokr_w1'); None for a key of no LoKr / LoHa factor."""
    prefix, _, part = key.rpartition(".")
    return (prefix, part) if part in PARTS else None


def is_lycoris(keys) -> bool:
    return any(split_part(k) for k in keys)


def kind_of(keys) -> str:
    """'lokr' or 'loha' for the keys of one LoKr / LoHa file; a file mixing them is refused."""
    kinds = {split_part(k)[1][:4] for k in keys if split_part(k)}  # type: ignore[index]
    if len(kinds) != 1:
        raise UsageError(f"a LyCORIS file with {' and '.join(sorted(kinds))} factors together; this tool reads one kind a file")
    return {"lokr": "lokr", "hada": "loha"}[kinds.pop()]


def kind_of_model(model) -> str:
    """The adapter kind (lora, lokr, loha) on a model with peft adapters."""
    return PEFT_TYPES.get(str(model.peft_config["default"].peft_type.value), "lora")


def modules_of(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """module -> its factors by part, for keys 'module.part'."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        split = split_part(key)
        if split is None:
            raise UsageError(f"LoKr / LoHa key {key!r} names no factor this tool knows ({', '.join(PARTS)})")
        out.setdefault(split[0], {})[split[1]] = tensor
    return out


def rank_of(factors: dict[str, torch.Tensor]) -> int | None:
    """The rank LyCORIS scales a module by: a decomposed factor's inner size; None for a LoKr of two full factors."""
    for part in ("hada_w1_b", "lokr_w2_b", "lokr_w1_b"):
        if part in factors:
            return int(factors[part].shape[0])
    return None


def delta(factors: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
    """The update a module applies to its weight (as peft and LyCORIS compute it), in float64."""
    f = {k: v.double() for k, v in factors.items()}
    if "hada_w1_a" in f:
        w1, w2 = f["hada_w1_a"] @ f["hada_w1_b"], f["hada_w2_a"] @ f["hada_w2_b"]
        return scale * w1 * w2
    w1 = f["lokr_w1"] if "lokr_w1" in f else f["lokr_w1_a"] @ f["lokr_w1_b"]
    w2 = f["lokr_w2"] if "lokr_w2" in f else f["lokr_w2_a"] @ f["lokr_w2_b"]
    if w2.dim() > 2:  # a convolution's factor: the kernel is w2's
        return scale * torch.stack([torch.kron(w1, w2[..., i, j]) for i in range(w2.shape[-2]) for j in range(w2.shape[-1])],
                                   -1).reshape(w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1], *w2.shape[-2:])  # fmt: skip
    return scale * torch.kron(w1, w2)


# ---------------------------------------------------------------- peft configs


def pattern_value(config: dict, key: str, module: str) -> float:
    """A module's r or alpha under peft's rank_pattern / alpha_pattern (patterns match a module path's end)."""
    import re

    pattern = {"r": "rank_pattern", "alpha": "alpha_pattern"}[key]
    for p, value in (config.get(pattern) or {}).items():
        if re.match(rf"(.*\.)?({p})$", module):
            return float(value)
    return float(config[key])


def saved_config(model, adapted: list[str]) -> dict:
    """peft's config of `model`'s adapter as the file's header keeps it: the adapted modules named one by one."""
    config = model.peft_config["default"].to_dict()
    return {**config, "target_modules": sorted(adapted), "exclude_modules": None}


def configs_in_header(meta: dict[str, str]) -> dict[str, dict]:
    """component -> peft config, from diffusers' `lora_adapter_metadata` header entry ('unet.r': …)."""
    try:
        flat = json.loads(meta.get("lora_adapter_metadata", "{}"))
    except json.JSONDecodeError:
        flat = {}
    out: dict[str, dict] = {}
    for key, value in flat.items() if isinstance(flat, dict) else ():
        component, _, name = key.partition(".")
        out.setdefault(component, {})[name] = value
    return out


def peft_config(config: dict):
    from peft import LoHaConfig, LoKrConfig

    fields = {k: v for k, v in config.items() if k not in ("peft_type", "task_type", "auto_mapping", "peft_version")}
    cls = LoKrConfig if str(config.get("peft_type")) in ("LOKR", "PeftType.LOKR") else LoHaConfig
    try:
        return cls(**{k: v for k, v in fields.items() if k in cls.__dataclass_fields__})
    except (TypeError, ValueError) as e:
        raise UsageError(f"the LoKr / LoHa config in the file's header cannot be read ({str(e).splitlines()[0]})") from None


def config_for(kind: str, modules: dict[str, dict[str, torch.Tensor]], alphas: dict[str, float]) -> dict:
    """peft's config that rebuilds `modules` (module -> factors) exactly: each module's rank and alpha as its factors and
    `alphas` say (a LoKr of two full factors: rank = the larger side of its second factor, so that peft makes it full
    too, and alpha = that rank: scale 1, as LyCORIS applies it), and for LoKr the Kronecker factor that gives each
    module's factor shapes."""
    from peft.tuners.lokr.layer import factorization

    ranks, alpha_of = {}, {}
    for module, factors in modules.items():
        rank = rank_of(factors)
        if rank is None:
            rank = max(factors["lokr_w2"].shape[:2])
            alpha_of[module] = float(rank)
        else:
            alpha_of[module] = alphas.get(module, float(rank))
        ranks[module] = rank
    r = collections.Counter(ranks.values()).most_common(1)[0][0]
    alpha = collections.Counter(alpha_of.values()).most_common(1)[0][0]
    config: dict[str, Any] = {
        "peft_type": "LOKR" if kind == "lokr" else "LOHA",
        "r": r,
        "alpha": alpha,
        "target_modules": sorted(modules),
        "rank_pattern": {f"{m}": v for m, v in ranks.items() if v != r},
        "alpha_pattern": {f"{m}": v for m, v in alpha_of.items() if v != alpha},
    }
    if kind == "lokr":
        shapes = {}
        for module, f in modules.items():
            w1 = f["lokr_w1"].shape if "lokr_w1" in f else (f["lokr_w1_a"].shape[0], f["lokr_w1_b"].shape[1])
            w2 = f["lokr_w2"].shape if "lokr_w2" in f else (f["lokr_w2_a"].shape[0], f["lokr_w2_b"].shape[1])
            shapes[module] = ((w1[0], w2[0]), (w1[1], w2[1]))
        for factor in sorted({s[0][0] for s in shapes.values()}) + [-1]:
            if all(factorization(o1 * o2, factor) == (o1, o2) and factorization(i1 * i2, factor) == (i1, i2)
                   for (o1, o2), (i1, i2) in shapes.values()):  # fmt: skip
                config["decompose_factor"] = factor
                break
        else:
            raise UsageError("a LoKr file whose Kronecker factors no single factor size gives; this tool cannot load it")
        config["decompose_both"] = any("lokr_w1_a" in f for f in modules.values())
    return config


# ---------------------------------------------------------------- loading into a pipeline


def load_into(pipe, state: dict[str, torch.Tensor], configs: dict[str, dict], adapter_name: str) -> None:
    """Add the adapters of a LoKr / LoHa `state` ('<component>.<module>.<part>', module names as the file spells them)
    to `pipe`'s components with peft, configured by `configs` (component -> peft config), and load every factor."""
    from peft import set_peft_model_state_dict

    from .adapter import module_path

    by_component: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        component, _, rest = key.partition(".")
        by_component.setdefault(component, {})[rest] = tensor
    for component, tensors in by_component.items():
        model = getattr(pipe, component, None)
        if model is None or component not in configs:
            raise UsageError(f"the LoKr / LoHa file has weights for {component!r}, which this model has not (or no config for)")
        renamed: dict[str, torch.Tensor] = {}
        names: dict[str, str | None] = {}
        for key, tensor in tensors.items():
            module, part = split_part(key)  # type: ignore[misc]
            here = names.setdefault(module, module_path(model, module))
            if here is None:
                raise UsageError(f"the LoKr / LoHa file adapts {component}.{module}, which this model has not")
            renamed[f"{here}.{part}"] = tensor
        config = dict(configs[component])
        rename = lambda d: {names.get(k, k): v for k, v in (d or {}).items()}  # noqa: E731
        config["target_modules"] = sorted(set(names.values()))
        config["rank_pattern"], config["alpha_pattern"] = rename(config.get("rank_pattern")), rename(config.get("alpha_pattern"))
        # diffusers' and transformers' own add_adapter, which keep `peft_config` (peft's loader reads it)
        model.add_adapter(peft_config(config), adapter_name=adapter_name)
        try:
            result: Any = set_peft_model_state_dict(model, renamed, adapter_name=adapter_name)
        except RuntimeError as e:  # a factor of another size: a file for another model
            raise UsageError(
                f"the LoKr / LoHa file does not fit this model's {component} ({str(e).splitlines()[-1].strip()[:160]}); "
                f"pass the --model it was trained on"
            ) from None
        unexpected = [k for k in result.unexpected_keys if any(f".{p}" in k for p in PARTS)]
        ours = [k for k in result.missing_keys if f".{adapter_name}" in k]
        missing = [k for k in ours if any(f".{p}." in k for p in PARTS)]
        if unexpected or missing:
            example = (unexpected or missing)[0]
            raise UsageError(
                f"the LoKr / LoHa file does not fit this model's {component} (e.g. {example}); pass the --model it was trained on"
            )


def set_scales(pipe, adapter_name: str, scales: dict[str, float]) -> None:
    """Each component's adapter at its strength (peft's set_scale multiplies the module's alpha / rank)."""
    from peft.tuners.lycoris_utils import LycorisLayer

    for component, scale in scales.items():
        model = getattr(pipe, component, None)
        for layer in model.modules() if model is not None else ():
            if isinstance(layer, LycorisLayer) and adapter_name in layer.scaling:
                layer.set_scale(adapter_name, scale)
