"""CLIP text encoders and the tokenizer the package ships (SD 1.x's, derived from OpenAI CLIP's BPE vocabulary):
shared by the families that condition on CLIP, and by their tiny test models."""

from __future__ import annotations

import weakref
from importlib import resources
from pathlib import Path

import torch

TOKEN_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # per tokenizer object, gone with it


def tokenizer_dir() -> Path:
    return Path(str(resources.files("dreambooth") / "assets" / "clip_tokenizer"))


def load_clip_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(tokenizer_dir())


def tokenize(tokenizer, prompts: list[str], device) -> torch.Tensor:
    # Training asks for the same few prompts every step: keep their token ids, on the device that reads them
    # (a copy from the host each step would make the host wait for the device).
    cache = TOKEN_IDS.setdefault(tokenizer, {}).setdefault((str(device), tokenizer.model_max_length), {})
    missing = [p for p in dict.fromkeys(prompts) if p not in cache]
    if missing:
        ids = tokenizer(
            missing, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(device)
        cache.update(zip(missing, ids))
    return torch.stack([cache[p] for p in prompts])


def tiny_text_settings(tokenizer) -> dict:
    """A 2-layer, 32-wide CLIP text tower over the real vocabulary: the tiny models' text encoders (and the tests'
    tiny CLIP scorer)."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_text_encoder(tokenizer, projection: bool, seed: int):
    """The tiny CLIP text encoder, random weights (seeded); with a 32-wide pooled projection when `projection`."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(**tiny_text_settings(tokenizer), projection_dim=32)
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
