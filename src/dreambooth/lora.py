"""LoRA adapters (peft) on the UNet and text encoder; saved and loaded in diffusers' layout."""

from __future__ import annotations

from pathlib import Path

import torch

from . import atomic
from .errors import UsageError

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
ADAPTER = "subject"


def add_lora(model: torch.nn.Module, rank: int, alpha: float, dropout: float, targets: list[str]) -> list[torch.nn.Parameter]:
    """Freeze `model`, attach a LoRA adapter to `targets`, return the new trainable parameters (fp32)."""
    from peft import LoraConfig

    model.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, lora_dropout=dropout, init_lora_weights="gaussian", target_modules=targets)
    try:
        model.add_adapter(config)
    except ValueError as e:
        raise UsageError(f"--target-modules {' '.join(targets)}: {str(e).splitlines()[0]}; name modules the model has") from None
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()  # fp32 master weights even when the base runs in half precision
    return params


def lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights in diffusers' key layout (what `load_lora_weights` expects)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(model))


def adapter_metadata(model: torch.nn.Module) -> dict:
    return model.peft_config["default"].to_dict()


def save_lora(out_dir: str | Path, unet: torch.nn.Module, text_encoder: torch.nn.Module | None = None) -> Path:
    """Write OUT_DIR/pytorch_lora_weights.safetensors atomically; diffusers' `load_lora_weights` reads it."""
    from diffusers import StableDiffusionPipeline

    out_dir = Path(out_dir)
    tmp = atomic.temp_dir_beside(out_dir / ".lora")
    kwargs = {"unet_lora_layers": lora_state_dict(unet), "unet_lora_adapter_metadata": adapter_metadata(unet)}
    if text_encoder is not None:
        kwargs["text_encoder_lora_layers"] = lora_state_dict(text_encoder)
        kwargs["text_encoder_lora_adapter_metadata"] = adapter_metadata(text_encoder)
    try:
        StableDiffusionPipeline.save_lora_weights(tmp, safe_serialization=True, **kwargs)
        final = out_dir / WEIGHT_NAME
        (tmp / WEIGHT_NAME).replace(final)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return final


def find_weights(lora: str | Path) -> Path:
    path = Path(lora).expanduser()
    if path.is_dir():
        path = path / WEIGHT_NAME
    if not path.is_file():
        raise UsageError(f"--lora {lora}: no {WEIGHT_NAME} there; pass a folder made by `dreambooth train` or the .safetensors file")
    if path.suffix.lower() != ".safetensors":
        raise UsageError(f"--lora {lora}: only .safetensors LoRA files are read (pickles can run code)")
    return path


def load_lora(pipe, lora: str | Path, unet_scale: float = 1.0, text_encoder_scale: float = 1.0) -> None:
    """Load a LoRA into `pipe` with separate strengths for its UNet and text-encoder parts."""
    path = find_weights(lora)
    try:
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=ADAPTER)
    except (ValueError, RuntimeError, KeyError) as e:
        raise UsageError(f"--lora {lora}: does not fit this base model ({str(e).splitlines()[0][:160]}); "
                         f"pass the --model it was trained on") from None
    scales = {"unet": unet_scale}
    if getattr(pipe.text_encoder, "peft_config", None):
        scales["text_encoder"] = text_encoder_scale
    pipe.set_adapters(ADAPTER, adapter_weights=scales)
