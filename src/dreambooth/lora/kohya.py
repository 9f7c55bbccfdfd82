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

import torch

from ..errors import UsageError
from ..families import Family
from .files import parse_key, stored_alphas


def has_kohya_layout(family: Family) -> bool:
    """This tool writes `family`'s LoRAs in the layout ComfyUI, A1111 / Forge and sd-scripts load. Read with a default:
    a family declares it has none by leaving `kohya_prefixes` empty."""
    return bool(getattr(family, "kohya_prefixes", None))


DORA_REFUSED = (
    "--export kohya: DoRA LoRAs are not written in the kohya layout (its .dora_scale could not be checked through "
    "diffusers' loader); pass --export none, or train without --dora (pytorch_lora_weights.safetensors, for "
    "diffusers, is written either way)"
)


def export_in_force(asked: str, family: Family, dora: bool = False) -> str:
    """`--export` as a run does it, "kohya" or "none": left empty, kohya wherever the family has that layout and the
    LoRA is no DoRA. Asking for kohya on a family without it, or with --dora, is refused before training starts."""
    if asked == "kohya" and not has_kohya_layout(family):
        raise UsageError(
            f"--export kohya: this tool does not write {family.title} LoRAs in the kohya layout yet; "
            f"pass --export none (pytorch_lora_weights.safetensors, for diffusers, is written either way)"
        )
    if asked == "kohya" and dora:
        raise UsageError(DORA_REFUSED)
    return asked or ("kohya" if has_kohya_layout(family) and not dora else "none")


def split_key(key: str) -> tuple[str, str, str]:
    """'unet.<module>.lora.down.weight' (or peft's lora_A / lora_B) -> ('unet', '<module>', 'down')."""
    parsed = parse_key(key)
    if parsed is None:
        raise UsageError(f"LoRA key {key!r} is in no layout this tool knows; export it from a `dreambooth train` folder")
    return parsed


def kohya_name(family: Family, component: str, module: str, denoiser_config) -> str:
    if component == family.denoiser:
        path = family.kohya_module(module, denoiser_config)
    else:
        path = module if module.startswith("text_model.") else "text_model." + module
    return family.kohya_prefixes[component] + path.replace(".", "_")


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


def to_kohya(
    weights: dict[str, torch.Tensor],
    alphas: dict[tuple[str, str], float],
    meta: dict[str, str],
    family: Family,
    version: str,
    denoiser_config,
) -> tuple[dict, dict]:
    """(tensors, header) in the kohya layout for a LoRA's `with_alphas` weights and alphas, for a base of `family`."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in weights.items():
        component, module, part = split_key(key)
        name = kohya_name(family, component, module, denoiser_config)
        out[f"{name}.lora_{part}.weight"] = tensor.contiguous()
        out[f"{name}.alpha"] = torch.tensor(alphas[(component, module)])
    header = {
        "ss_network_module": "networks.lora",
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
