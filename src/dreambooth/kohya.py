"""The kohya / A1111 / ComfyUI LoRA layout: `lora_unet_*`, `lora_te_*` (`lora_te1_*`, `lora_te2_*` for SDXL),
`.lora_down.weight`, `.lora_up.weight` and a scalar `.alpha` per module.

Module names follow kohya's sd-scripts, which those UIs read: for SD 1.x/2.x the diffusers UNet's names
(sd-scripts trains that UNet), for SDXL the original (sgm) UNet's `input_blocks.N.1` / `middle_block.1` /
`output_blocks.N.1`; text encoders keep transformers' `text_model.*` names.
"""

from __future__ import annotations

import json
import re

import torch

from .errors import UsageError
from .lora import parse_key

PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te_", "text_encoder_2": "lora_te2_"}
BASE_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0", "tiny": "sd_v1", "tiny-sdxl": "sdxl_base_v1-0"}


def split_key(key: str) -> tuple[str, str, str]:
    """'unet.<module>.lora.down.weight' (or peft's lora_A / lora_B) -> ('unet', '<module>', 'down')."""
    parsed = parse_key(key)
    if parsed is None:
        raise UsageError(f"LoRA key {key!r} is in no layout this tool knows; export it from a `dreambooth train` folder")
    return parsed


def sgm_unet_path(module: str, layers_per_block: int) -> str:
    """A diffusers UNet attention-module path -> the original (sgm) UNet's path."""
    n = layers_per_block + 1  # resnets per down block + its downsampler; per up block
    if m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", module):
        return f"input_blocks.{1 + int(m[1]) * n + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", module):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", module):
        return f"output_blocks.{int(m[1]) * n + int(m[2])}.1.{m[3]}"
    raise UsageError(f"UNet module {module!r} has no kohya name this tool knows (only attention-block modules export); "
                     f"train with the default --target-modules to export")


def kohya_name(component: str, module: str, sdxl: bool, layers_per_block: int) -> str:
    if component == "unet":
        path = sgm_unet_path(module, layers_per_block) if sdxl else module
    else:
        path = module if module.startswith("text_model.") else "text_model." + module
    prefix = "lora_te1_" if (sdxl and component == "text_encoder") else PREFIX[component]
    return prefix + path.replace(".", "_")


def alphas_from_metadata(meta: dict[str, str]) -> dict[str, float]:
    """Per-component alpha from diffusers' `lora_adapter_metadata` (peft's config per component)."""
    try:
        adapter = json.loads(meta.get("lora_adapter_metadata", "{}"))
    except json.JSONDecodeError:
        adapter = {}
    return {k[: -len(".lora_alpha")]: float(v) for k, v in adapter.items() if k.endswith(".lora_alpha")}


def to_kohya(state: dict[str, torch.Tensor], meta: dict[str, str], sdxl: bool, layers_per_block: int) -> tuple[dict, dict]:
    """(tensors, header) in the kohya layout for a LoRA saved by `dreambooth train`."""
    alphas = alphas_from_metadata(meta)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        component, module, part = split_key(key)
        name = kohya_name(component, module, sdxl, layers_per_block)
        out[f"{name}.lora_{part}.weight"] = tensor.contiguous()
        rank = tensor.shape[0] if part == "down" else tensor.shape[1]
        out[f"{name}.alpha"] = torch.tensor(alphas.get(component, float(rank)))
    header = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": meta.get("dreambooth.rank", ""),
        "ss_network_alpha": meta.get("dreambooth.alpha", ""),
        "ss_base_model_version": BASE_VERSION.get(meta.get("dreambooth.family", ""), ""),
        "ss_sd_model_name": meta.get("dreambooth.base_model", ""),
        "ss_max_train_steps": meta.get("dreambooth.steps", ""),
        "ss_resolution": meta.get("dreambooth.resolution", ""),
        "ss_training_comment": f"DreamBooth LoRA: {meta.get('dreambooth.instance_prompt', '')}",
        "ss_v2": str(meta.get("dreambooth.family") == "sd2"),
    }
    header.update({k: v for k, v in meta.items() if k.startswith("dreambooth.")})
    return out, {k: v for k, v in header.items() if v != ""}
