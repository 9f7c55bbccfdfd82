"""The kohya / A1111 / ComfyUI LoRA layout: `lora_unet_*`, `lora_te_*` (`lora_te1_*`, `lora_te2_*` with two encoders),
`.lora_down.weight`, `.lora_up.weight` and a scalar `.alpha` per module.

Module names follow kohya's sd-scripts, which those UIs read: each family says how it names the denoiser's
modules (for SD 1.x/2.x the diffusers UNet's names, for the XL UNet the original `input_blocks.N.1`, ...) and which
prefix each component gets; text encoders keep transformers' `text_model.*` names.
"""

from __future__ import annotations

import json

import torch

from ..errors import UsageError
from ..families import Family
from .files import parse_key


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


def alphas_from_metadata(meta: dict[str, str]) -> dict[str, float]:
    """Per-component alpha from diffusers' `lora_adapter_metadata` (peft's config per component)."""
    try:
        adapter = json.loads(meta.get("lora_adapter_metadata", "{}"))
    except json.JSONDecodeError:
        adapter = {}
    return {k[: -len(".lora_alpha")]: float(v) for k, v in adapter.items() if k.endswith(".lora_alpha")}


def to_kohya(
    state: dict[str, torch.Tensor], meta: dict[str, str], family: Family, version: str, denoiser_config
) -> tuple[dict, dict]:
    """(tensors, header) in the kohya layout for a LoRA saved by `dreambooth train`, for a base of `family`."""
    alphas = alphas_from_metadata(meta)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        component, module, part = split_key(key)
        name = kohya_name(family, component, module, denoiser_config)
        out[f"{name}.lora_{part}.weight"] = tensor.contiguous()
        rank = tensor.shape[0] if part == "down" else tensor.shape[1]
        out[f"{name}.alpha"] = torch.tensor(alphas.get(component, float(rank)))
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
