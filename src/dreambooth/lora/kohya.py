"""The kohya / A1111 / ComfyUI LoRA layout: `lora_unet_*`, `lora_te_*` (`lora_te1_*`, `lora_te2_*` with two encoders),
`.lora_down.weight`, `.lora_up.weight` and a scalar `.alpha` per module.

Module names follow kohya's sd-scripts, which those UIs read: each family says how it names the denoiser's
modules (for SD 1.x/2.x the diffusers UNet's names, for the XL UNet the original `input_blocks.N.1`, ...) and which
prefix each component gets; text encoders keep transformers' `text_model.*` names. A family whose kohya layout this
tool does not write yet leaves its `kohya_prefixes` empty: its runs write the diffusers file alone.

`.alpha` holds the alpha the LoRA was trained with and the up weights are as trained, the way sd-scripts writes them,
so a reader applies (alpha / rank) · up · down: the trained strength.
"""

from __future__ import annotations

import json

import torch

from ..errors import UsageError
from ..families import Family
from .keys import parse_key, stored_alphas


def has_kohya_layout(family: Family) -> bool:
    """This tool writes `family`'s LoRAs in the layout ComfyUI, A1111 / Forge and sd-scripts load. Read with a default:
    a family declares it has none by leaving `kohya_prefixes` empty."""
    return bool(getattr(family, "kohya_prefixes", None))


DORA_REFUSED = (
    "--export kohya: DoRA LoRAs are not written in the kohya layout (its .dora_scale could not be checked through "
    "diffusers' loader); pass --export none, or train without --dora (pytorch_lora_weights.safetensors, for "
    "diffusers, is written either way)"
)


LYCORIS_FUSED = (
    "{family}'s kohya layout fuses q, k and v (and the single blocks' MLP input) into one layer, and a {adapter} "
    "update of each part cannot be written exactly as one of the fused layer"
)


def fuses_layers(family: Family) -> bool:
    from ..families.base import no_fused_layers

    return family.kohya_parts is not no_fused_layers


def export_in_force(asked: str, family: Family, dora: bool = False, adapter: str = "lora") -> str:
    """`--export` as a run does it, "kohya" or "none": left empty, kohya wherever the family has that layout and the
    LoRA is no DoRA (nor a LoKr / LoHa on a family whose layout fuses layers). Asking for kohya on a family without
    it, or with --dora, or for a LoKr / LoHa on fused layers, is refused before training starts."""
    if adapter != "lora" and has_kohya_layout(family) and fuses_layers(family):
        if asked == "kohya":
            raise UsageError(f"--export kohya: {LYCORIS_FUSED.format(family=family.title, adapter=adapter)}; pass --export none")
        return "none"
    if asked == "kohya" and not has_kohya_layout(family):
        raise UsageError(
            f"--export kohya: this tool does not write {family.title} LoRAs in the kohya layout yet; "
            f"pass --export none (pytorch_lora_weights.safetensors, for diffusers, is written either way)"
        )
    if asked == "kohya" and dora:
        raise UsageError(DORA_REFUSED)
    return asked or ("kohya" if has_kohya_layout(family) and not dora else "none")


def check_layout_names(family: Family, denoiser) -> None:
    """Every adapted module of the denoiser has a name in the kohya layout: asked when the adapters are added, so a
    run that could not write its kohya file stops before training, not after it."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module, layer in denoiser.named_modules():
        if isinstance(layer, BaseTunerLayer):
            family.kohya_module(module, denoiser.config)


def split_key(key: str) -> tuple[str, str, str]:
    """'unet.<module>.lora.down.weight' (or peft's lora_A / lora_B) -> ('unet', '<module>', 'down')."""
    parsed = parse_key(key)
    if parsed is None:
        raise UsageError(f"LoRA key {key!r} is in no layout this tool knows; export it from a `dreambooth train` folder")
    return parsed


def kohya_layer(family: Family, component: str, module: str, denoiser_config) -> tuple[str, str]:
    """(kohya name, module path in the family's original model) of a component's module."""
    if component == family.denoiser:
        path = family.kohya_module(module, denoiser_config)
    else:
        path = module if module.startswith("text_model.") else "text_model." + module
    return family.kohya_prefixes[component] + path.replace(".", "_"), path


def kohya_name(family: Family, component: str, module: str, denoiser_config) -> str:
    return kohya_layer(family, component, module, denoiser_config)[0]


def layer_parts(family: Family, component: str, path: str, denoiser_config) -> tuple[tuple[str, int], ...]:
    """The modules a layer of the original model fuses (see `Family.kohya_parts`); () for one module."""
    return family.kohya_parts(path, denoiser_config) if component == family.denoiser else ()


def trained_alpha(meta: dict[str, str]) -> float | None:
    """The alpha `dreambooth train` recorded in the header (`dreambooth.alpha`), None when there is none."""
    try:
        alpha = float(meta.get("dreambooth.alpha", ""))
    except ValueError:
        return None
    return alpha if alpha > 0 else None


def with_alphas(
    state: dict[str, torch.Tensor], meta: dict[str, str]
) -> tuple[dict[str, torch.Tensor], dict[tuple[str, str], float]]:
    """The LoRA's weights as trained and the alpha of each (component, module): the native file's up weights carry
    alpha/rank (or, in files of earlier versions, its header says so), so they are divided by it again."""
    stored, trained = stored_alphas(meta), trained_alpha(meta)
    weights, alphas = {}, {}
    for key, tensor in state.items():
        component, module, part = split_key(key)
        rank = tensor.shape[0] if part == "down" else tensor.shape[1]
        applied = stored.get(component, float(rank))  # what the file's weights apply as they are read: applied / rank
        alpha = trained or applied
        if part == "up" and alpha != applied:
            tensor = tensor * (applied / alpha)
        weights[key], alphas[(component, module)] = tensor, alpha
    return weights, alphas


def fused_lora(parts: list[tuple[torch.Tensor, torch.Tensor] | None], out_sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One LoRA (down, up) for a layer that computes several modules' outputs at once (FLUX.1's qkv), from each
    part's (down, up) of rank r: the downs stacked (rank n·r) and the ups on a block diagonal, so each part's output
    gets its own update and nothing else. A part without a LoRA gets zeros. Written with alpha n·α, the layer's
    scale n·α / n·r is each part's α / r: every part's update is exact, as sd-scripts writes a split-qkv LoRA."""
    down0, _ = next(p for p in parts if p is not None)
    rank, width = down0.shape
    downs = [p[0] if p else down0.new_zeros(rank, width) for p in parts]
    ups = [p[1] if p else down0.new_zeros(size, rank) for p, size in zip(parts, out_sizes)]
    return torch.cat(downs), torch.block_diag(*ups)


def split_fused(down: torch.Tensor, up: torch.Tensor, out_sizes: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The inverse of `fused_lora` for a block-diagonal up: each part's (down, up)."""
    rank = down.shape[0] // len(out_sizes)
    if rank * len(out_sizes) != down.shape[0] or sum(out_sizes) != up.shape[0]:
        raise UsageError(f"a fused LoRA of rank {down.shape[0]} and {up.shape[0]} outputs does not split into {out_sizes}")
    rows = torch.tensor([0, *out_sizes]).cumsum(0).tolist()
    out = []
    for i in range(len(out_sizes)):
        block = up[rows[i] : rows[i + 1]]
        if block[:, : i * rank].any() or block[:, (i + 1) * rank :].any():
            raise UsageError("a fused LoRA's up weight is not block-diagonal: its parts cannot be told apart")
        out.append((down[i * rank : (i + 1) * rank], block[:, i * rank : (i + 1) * rank]))
    return out


def to_kohya(
    weights: dict[str, torch.Tensor],
    alphas: dict[tuple[str, str], float],
    meta: dict[str, str],
    family: Family,
    version: str,
    denoiser_config,
) -> tuple[dict, dict]:
    """(tensors, header) in the kohya layout for a LoRA's `with_alphas` weights and alphas, for a base of `family`.
    Modules that the family's original model computes as one layer (`Family.kohya_parts`) are written as one LoRA."""
    layers: dict[str, dict[str, dict[str, torch.Tensor]]] = {}  # kohya name -> module -> down/up
    fused: dict[str, tuple[tuple[str, int], ...]] = {}
    layer_alpha: dict[str, float] = {}
    for key, tensor in weights.items():
        component, module, part = split_key(key)
        name, path = kohya_layer(family, component, module, denoiser_config)
        layers.setdefault(name, {}).setdefault(module, {})[part] = tensor
        fused[name] = layer_parts(family, component, path, denoiser_config)
        layer_alpha[name] = alphas[(component, module)]
    out: dict[str, torch.Tensor] = {}
    for name, modules in layers.items():
        if parts := fused[name]:
            given = [modules.get(module) for module, _ in parts]
            down, up = fused_lora([(m["down"], m["up"]) if m else None for m in given], [size for _, size in parts])
            alpha = layer_alpha[name] * len(parts)
        else:
            ((only,),) = [modules.values()]
            down, up, alpha = only["down"], only["up"], layer_alpha[name]
        out[f"{name}.lora_down.weight"] = down.contiguous()
        out[f"{name}.lora_up.weight"] = up.contiguous()
        out[f"{name}.alpha"] = torch.tensor(alpha)
    header = {
        "ss_network_module": family.kohya_network_module,
        "ss_network_dim": meta.get("dreambooth.rank", ""),
        "ss_network_alpha": meta.get("dreambooth.alpha", ""),
        "ss_base_model_version": family.kohya_base_version(version),
        "ss_sd_model_name": meta.get("dreambooth.base_model", ""),
        "ss_max_train_steps": meta.get("dreambooth.steps", ""),
        "ss_resolution": meta.get("dreambooth.resolution", ""),
        "ss_training_comment": f"DreamBooth LoRA: {meta.get('dreambooth.instance_prompt', '')}",
        "ss_v2": str(family.kohya_base_version(version) == "sd_v2"),
    }
    header.update({k: v for k, v in meta.items() if k.startswith("dreambooth.")})
    return out, {k: v for k, v in header.items() if v != ""}


def kohya_names_of(family: Family, pipe, kinds: tuple[type, ...] = (torch.nn.Linear,)) -> dict[str, tuple[str, str, str]]:
    """kohya name -> (component, module, path in the original model) for every layer of `pipe` of `kinds` that the
    family's kohya layout names."""
    config = getattr(pipe, family.denoiser).config
    layers: dict[str, tuple[str, str, str]] = {}
    for component in family.kohya_prefixes:
        model = getattr(pipe, component, None)
        for found, layer in model.named_modules() if model is not None else ():
            module = found.removesuffix(".base_layer")  # peft's wrapped layer, when the model has adapters
            if isinstance(layer, kinds) and ".lora_" not in module:
                try:
                    layers[kohya_name(family, component, module, config)] = (
                        component, module, kohya_layer(family, component, module, config)[1]
                    )  # fmt: skip
                except UsageError:
                    continue  # a layer this layout has no name for, so no file of this tool holds one
    return layers


def from_kohya(
    tensors: dict[str, torch.Tensor], family: Family, pipe
) -> tuple[dict[str, torch.Tensor], dict[tuple[str, str], float]]:
    """A kohya file this tool wrote for `pipe`'s family, as `with_alphas` weights and alphas (fused layers split
    again): the read-back of a file that diffusers' own reader cannot read at this model's sizes."""
    config = getattr(pipe, family.denoiser).config
    layers = kohya_names_of(family, pipe)
    weights: dict[str, torch.Tensor] = {}
    alphas: dict[tuple[str, str], float] = {}
    for key in tensors:
        if not key.endswith(".lora_down.weight"):
            continue
        name = key.removesuffix(".lora_down.weight")
        if name not in layers:
            raise UsageError(f"LoRA key {key!r} names no layer of this {family.title} model")
        component, module, path = layers[name]
        down, up, alpha = tensors[key], tensors[f"{name}.lora_up.weight"], float(tensors[f"{name}.alpha"])
        if parts := layer_parts(family, component, path, config):
            split = split_fused(down, up, [size for _, size in parts])
            each = [(part, d, u) for (part, _), (d, u) in zip(parts, split)]
            alpha /= len(parts)
        else:
            each = [(module, down, up)]
        for part, part_down, part_up in each:
            weights[f"{component}.{part}.lora_A.weight"] = part_down  # peft's names, which every reader takes
            weights[f"{component}.{part}.lora_B.weight"] = part_up
            alphas[(component, part)] = alpha
    return weights, alphas


# ---------------------------------------------------------------- LoKr / LoHa in LyCORIS' kohya-style layout


def to_kohya_lycoris(
    state: dict[str, torch.Tensor], configs: dict[str, dict], meta: dict[str, str], family: Family, version: str,
    denoiser_config,
) -> tuple[dict, dict]:  # fmt: skip
    """(tensors, header) of a LoKr / LoHa (the native file's `state` and per-component peft `configs`) in the layout
    LyCORIS writes and ComfyUI, A1111 / Forge read: `<kohya name>.<factor>` and `<kohya name>.alpha`. A LoKr of two
    full factors gets its peft scale alpha / rank multiplied into `lokr_w1` (those readers apply such a module as it
    is) and the alpha LyCORIS writes for it, its rank."""
    from .lycoris import kind_of, modules_of, pattern_value, rank_of

    kind = kind_of(state)
    out: dict[str, torch.Tensor] = {}
    for key, factors in modules_of(state).items():
        component, _, module = key.partition(".")
        name, path = kohya_layer(family, component, module, denoiser_config)
        if layer_parts(family, component, path, denoiser_config):
            raise UsageError(f"--export kohya: {LYCORIS_FUSED.format(family=family.title, adapter=kind)}; pass --export none")
        config = configs[component]
        r, alpha = pattern_value(config, "r", module), pattern_value(config, "alpha", module)
        factors = dict(factors)
        if rank_of(factors) is None:  # two full factors: LyCORIS' readers apply the product at scale 1
            if alpha != r:
                factors["lokr_w1"] = factors["lokr_w1"] * (alpha / r)
            alpha = r
        for part, tensor in factors.items():
            out[f"{name}.{part}"] = tensor.contiguous()
        out[f"{name}.alpha"] = torch.tensor(alpha)
    header = {
        "ss_network_module": "lycoris.kohya",
        "ss_network_args": json.dumps(
            {
                "algo": kind,
                **({"factor": str(configs[next(iter(configs))].get("decompose_factor", -1))} if kind == "lokr" else {}),
            }
        ),  # fmt: skip
        "ss_network_dim": meta.get("dreambooth.rank", ""),
        "ss_network_alpha": meta.get("dreambooth.alpha", ""),
        "ss_base_model_version": family.kohya_base_version(version),
        "ss_sd_model_name": meta.get("dreambooth.base_model", ""),
        "ss_training_comment": f"DreamBooth {kind}: {meta.get('dreambooth.instance_prompt', '')}",
    }
    header.update({k: v for k, v in meta.items() if k.startswith("dreambooth.")})
    return out, {k: v for k, v in header.items() if v != ""}


def from_kohya_lycoris(tensors: dict[str, torch.Tensor], family: Family, pipe) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """A LyCORIS kohya-style LoKr / LoHa file for `pipe`'s family as (state, configs): the factors under this
    model's module names ('<component>.<module>.<factor>') and, per component, the peft config that applies them as
    LyCORIS does (see `lycoris.config_for`)."""
    from .lycoris import config_for, kind_of, modules_of

    layers = kohya_names_of(family, pipe, (torch.nn.Linear, torch.nn.Conv2d))
    kind = kind_of(k for k in tensors if not k.endswith(".alpha"))
    state: dict[str, torch.Tensor] = {}
    alphas: dict[str, dict[str, float]] = {}
    for name, factors in modules_of({k: v for k, v in tensors.items() if not k.endswith(".alpha")}).items():
        if name not in layers:
            raise UsageError(f"LoKr / LoHa key {name!r} names no layer of this {family.title} model")
        component, module, _ = layers[name]
        for part, tensor in factors.items():
            state[f"{component}.{module}.{part}"] = tensor
        if f"{name}.alpha" in tensors:
            alphas.setdefault(component, {})[module] = float(tensors[f"{name}.alpha"])
    by_component: dict[str, dict] = {}
    for key, factors in modules_of(state).items():
        component, _, module = key.partition(".")
        by_component.setdefault(component, {})[module] = factors
    configs = {c: config_for(kind, modules, alphas.get(c, {})) for c, modules in by_component.items()}
    return state, configs
