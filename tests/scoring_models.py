"""Tiny random scoring models saved the way real ones are stored (safetensors + configs), so tests load them
through the same path as `facebook/dino-vits16`, `openai/clip-vit-base-patch32` and converted LPIPS weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def build_scoring_models(folder: Path) -> dict[str, str]:
    import transformers
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel, ViTConfig, ViTModel

    from dreambooth.evaluation.lpips import LPIPS
    from dreambooth.families.clip import load_clip_tokenizer, tiny_text_settings

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    vit = ViTConfig(
        image_size=224, patch_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    ViTModel(vit, add_pooling_layer=False).save_pretrained(folder / "dino")

    tokenizer = load_clip_tokenizer()
    text = tiny_text_settings(tokenizer)
    vision = dict(image_size=224, patch_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    torch.manual_seed(1)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder / "clip")
    processor_cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    processor_cls().save_pretrained(folder / "clip")
    tokenizer.save_pretrained(folder / "clip")

    torch.manual_seed(2)
    net = LPIPS()
    with torch.no_grad():
        for i in range(5):  # the real heads are non-negative, which keeps distances >= 0
            head = getattr(net, f"lin{i}").model[1]
            head.weight.abs_()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "lpips.safetensors"))
    return {
        "dino_model": str(folder / "dino"),
        "clip_model": str(folder / "clip"),
        "lpips_net": str(folder / "lpips.safetensors"),
    }


def noise_image(path: Path, seed: int, size: tuple[int, int] = (96, 80)) -> Path:
    """A random-coloured blocky image (different seed, different picture)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(small).resize(size, Image.NEAREST).save(path)
    return path
