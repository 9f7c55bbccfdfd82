"""The interface every base-family module implements: a `Family` of plain values and functions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import autoencoder
from ..objectives import Objective

# Prompt embeddings as a family makes them: named tensors, batch first (e.g. "hidden", "pooled").
PromptEmbeddings = dict[str, torch.Tensor]


def every_module_used(component: str, encoder: Any) -> str | None:
    return None


def no_fused_layers(path: str, config: Any) -> tuple[tuple[str, int], ...]:
    return ()


def diffusers_reads_every_size(config: Any) -> bool:
    return True


def classifier_free_guidance(guidance: float, negative_prompts: list[str] | None, count: int) -> dict:
    # the negative prompt only when given: FLUX.2 [klein]'s pipeline takes none
    return {"guidance_scale": guidance, **({"negative_prompt": negative_prompts} if negative_prompts else {})}


def latents_as_they_are(pipe: Any, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return latents


@dataclass(frozen=True)
class Family:
    name: str  # written into LoRA headers: "sd", "sdxl"
    title: str  # in logs and model cards
    pipeline_class: str  # the diffusers pipeline class that loads it (and a LoRA made for it)
    denoiser: str  # pipeline component that gets the main LoRA: "unet"
    text_encoders: tuple[str, ...]  # pipeline components, in the order encode_prompts takes them
    tokenizers: tuple[str, ...]
    objective: Objective  # noising, training target, timesteps, loss weights
    recognise: Callable[[Any], bool]  # a loaded pipeline is of this family
    recognise_file: Callable[[Path], bool]  # a single-file checkpoint is of this family
    versions: tuple[str, ...]  # the released generations of the family ("sd1", "sd2")
    version: Callable[[Any], str]  # which of them a loaded base is, "" when none (a custom or test model)
    native_resolution: Callable[[Any], int]  # pixels the base was trained at
    encode_prompts: Callable[[list, list, list[str], Any], PromptEmbeddings]  # (tokenizers, encoders, prompts, device)
    # (denoiser, noisy latents, timesteps, prompt embeddings, per-example geometry [orig h, orig w, top, left, h, w])
    denoise: Callable[[Any, torch.Tensor, torch.Tensor, PromptEmbeddings, torch.Tensor], torch.Tensor]
    denoiser_targets: tuple[str, ...]  # default LoRA targets: the attention projections (`--target-modules attention`)
    text_encoder_targets: tuple[str, ...]
    kohya_prefixes: dict[str, str]  # pipeline component -> kohya's key prefix
    kohya_module: Callable[[str, Any], str]  # (denoiser module path, denoiser config) -> the module name kohya writes
    kohya_base_version: Callable[[str], str]  # version -> sd-scripts' ss_base_model_version
    adapters_words: tuple[str, str]  # model card: (denoiser only, with the text encoder(s))
    legacy_names: tuple[str, ...] = ()  # what older LoRA headers wrote as the family
    single_file_options: Callable[[], dict] = dict  # extra keywords for the pipeline's from_single_file
    # (component, model) -> a regex of its modules whose output the family never reads, or None. They get no
    # adapter: it could not learn, and data-parallel training stops at parameters that get no gradient.
    unread_modules: Callable[[str, Any], str | None] = every_module_used
    # text encoders never trained (T5: 4.7 B parameters): their embeddings are computed once and cached, and they
    # leave the GPU, also when --train-text-encoder trains the others
    frozen_text_encoders: tuple[str, ...] = ()
    # tokenizers whose length is --max-sequence-length (T5's); the others keep their own (CLIP: 77)
    long_tokenizers: tuple[str, ...] = ()
    # the feed-forward layers `--target-modules attention-mlp` adds to the attention projections
    mlp_targets: tuple[str, ...] = ()
    resolution_multiple: int = 8  # training and sampling sizes are multiples of this (VAE factor x patch size)
    # (pipeline, what it returns with output_type="latent", height, width) -> latents the VAE decodes (FLUX packs them)
    sampled_latents: Callable[[Any, torch.Tensor, int, int], torch.Tensor] = latents_as_they_are
    # (kohya module path, denoiser config) -> the denoiser modules sd-scripts' layout fuses into that one layer, in
    # order, with their output sizes (FLUX.1's qkv); () where one module is one layer. Their LoRAs are written as one.
    kohya_parts: Callable[[str, Any], tuple[tuple[str, int], ...]] = no_fused_layers
    kohya_network_module: str = "networks.lora"  # sd-scripts' `ss_network_module` for the family
    # (denoiser config) -> diffusers' own reader reads this family's kohya files at this model's sizes
    diffusers_reads_kohya: Callable[[Any], bool] = diffusers_reads_every_size
    # The VAE's conventions, for a VAE that is not an image AutoencoderKL (Qwen-Image's video VAE: a frame axis, per-
    # channel latent statistics): (vae, pixels (B, 3, H, W) in [-1, 1]) -> the posterior of (B, C, h, w) latents
    encode_images: Callable[[Any, torch.Tensor], Any] = autoencoder.encode
    normalised_latents: Callable[[Any, torch.Tensor], torch.Tensor] = autoencoder.normalised  # (vae, VAE latents)
    # (vae, denoised latents (B, C, h, w)) -> images (B, 3, H, W) in [-1, 1]
    decoded_latents: Callable[[Any, torch.Tensor], torch.Tensor] = autoencoder.decode
    # (guidance, negative prompts or None, number of prompts) -> the pipeline call's guidance keywords
    guidance_options: Callable[[float, list[str] | None, int], dict] = classifier_free_guidance
    # ComfyUI's key map for the family reads the diffusers file's names as they are (`transformer.<module>`): with no
    # kohya layout, that file is the one to load there
    comfyui_reads_diffusers_file: bool = False
    # text encoder component -> the key of its new token rows in a textual-inversion file (`clip_l`, `clip_g`, `t5`, ...);
    # the encoders that take the new tokens of --method textual-inversion / pivotal. Empty: the family takes none yet
    embedding_keys: dict[str, str] = field(default_factory=dict)
    # ComfyUI (`embedding:<name>`) and A1111 / Forge read the family's embedding files (and A1111 / Forge the ones
    # bundled into a kohya LoRA file)
    embeddings_elsewhere: bool = False
    # modules of the denoiser ComfyUI's key map has no diffusers name for (it drops them from the diffusers file), with
    # the name of the same weight in ComfyUI's own model, under which it loads them
    comfyui_unmapped: dict[str, str] = field(default_factory=dict)


def checkpoint_has(path: Path, prefix: str) -> bool:
    """A single-file checkpoint holds a tensor whose name starts with `prefix` (read from its header only)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return any(k.startswith(prefix) for k in f.keys())
    except Exception:  # safetensors raises its own error type for a damaged header
        return False
