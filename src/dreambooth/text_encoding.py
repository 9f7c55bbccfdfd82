"""Prompts -> the embeddings the UNet is conditioned on, for one text encoder (SD 1.x/2.x) or two (SDXL)."""

from __future__ import annotations

import weakref

import torch


def tokenize(tokenizer, prompts: list[str], device) -> torch.Tensor:
    # Training asks for the same few prompts every step: keep their token ids.
    cache = TOKEN_IDS.setdefault(tokenizer, {})
    missing = [p for p in dict.fromkeys(prompts) if p not in cache]
    if missing:
        ids = tokenizer(missing, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        cache.update(zip(missing, ids))
    return torch.stack([cache[p] for p in prompts]).to(device)


TOKEN_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # per tokenizer object, gone with it


def encode_prompts(tokenizers: list, encoders: list, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states, pooled embedding or None), computed as the matching diffusers pipeline does.

    SD 1.x/2.x: the last hidden state of the one encoder. SDXL: the penultimate hidden states of both
    encoders side by side, and the second encoder's projected pooled embedding."""
    if len(encoders) == 1:
        return encoders[0](tokenize(tokenizers[0], prompts, device))[0], None
    hidden, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, encoders):
        out = encoder(tokenize(tokenizer, prompts, device), output_hidden_states=True)
        if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds first
            pooled = out[0]
        hidden.append(out.hidden_states[-2])
    return torch.cat(hidden, dim=-1), pooled
