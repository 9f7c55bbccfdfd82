"""FLUX.1 [dev] / [schnell]: a rectified-flow transformer (double-stream joint blocks, then single-stream blocks) on
2x2-packed latents of a 16-channel VAE, conditioned on T5's token embeddings and CLIP's pooled embedding, with
rotary position ids for image and text tokens and, in [dev], a distilled guidance value as an input."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import UsageError
from ..objectives.flow import FLOW
from . import t5
from .base import Family, PromptEmbeddings, checkpoint_has
from .clip import load_clip_tokenizer, tiny_text_encoder, tokenize
from .mmdit import TRANSFORMER_MLP_TARGETS, TRANSFORMER_TARGETS, native_resolution, tiny_vae
from .unet import CLIP_TARGETS


def recognise(pipe) -> bool:
    transformer = getattr(pipe, "transformer", None)
    return transformer is not None and type(transformer).__name__ == "FluxTransformer2DModel"


def recognise_file(path: Path) -> bool:
    """Black Forest Labs' files name `double_blocks` (bare, or under `model.diffusion_model.` in all-in-one files);
    diffusers-format single files `single_transformer_blocks`."""
    return any(
        checkpoint_has(path, prefix)
        for prefix in ("double_blocks.", "model.diffusion_model.double_blocks.", "single_transformer_blocks.")
    )


def version(pipe) -> str:
    return "flux1-dev" if pipe.transformer.config.guidance_embeds else "flux1-schnell"


def encode_prompts(tokenizers: list, encoders: list, prompts: list[str], device) -> PromptEmbeddings:
    """As FluxPipeline computes them: CLIP's pooled embedding ("pooled") and T5's token embeddings ("hidden"). An
    encoder given as None is not asked (its part comes from a cache)."""
    out: PromptEmbeddings = {}
    clip, t5_encoder = encoders
    if clip is not None:
        out["pooled"] = clip(tokenize(tokenizers[0], prompts, device), output_hidden_states=False).pooler_output
    if t5_encoder is not None:
        out["hidden"] = t5_encoder(tokenize(tokenizers[1], prompts, device), output_hidden_states=False)[0]
    return out


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): each 2x2 latent patch one token."""
    from diffusers import FluxPipeline

    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack` for latents of `height` x `width`."""
    from diffusers import FluxPipeline

    return FluxPipeline._unpack_latents(tokens, height, width, 1)


def denoise(
    transformer, noisy: torch.Tensor, timesteps: torch.Tensor, prompts: PromptEmbeddings, geometry: torch.Tensor
) -> torch.Tensor:
    """The velocity for `noisy` (B, C, H, W) at `timesteps` (0-1000); [dev] is given prompts["guidance"]."""
    from diffusers import FluxPipeline

    b, _, h, w = noisy.shape
    hidden = prompts["hidden"]
    image_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, noisy.device, hidden.dtype)
    text_ids = torch.zeros(hidden.shape[1], 3, device=noisy.device, dtype=hidden.dtype)
    guidance = prompts.get("guidance") if unwrapped(transformer).config.guidance_embeds else None
    out = transformer(
        hidden_states=pack(noisy),
        timestep=timesteps / 1000,  # the transformer scales time and guidance by 1000 itself
        guidance=guidance,
        pooled_projections=prompts["pooled"],
        encoder_hidden_states=hidden,
        txt_ids=text_ids,
        img_ids=image_ids,
        return_dict=False,
    )[0]
    return unpack(out, h, w)


def unwrapped(model):
    return getattr(model, "module", model)  # DistributedDataParallel keeps the model in .module


def sampled_latents(pipe, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """FluxPipeline returns packed latents with output_type="latent"."""
    scale = pipe.vae_scale_factor
    return unpack(latents, height // scale, width // scale)


# diffusers' module path in a block -> Black Forest Labs' (which sd-scripts writes, ComfyUI and Forge read); the
# attention projections that BFL's model computes as one fused layer map to that layer, and `kohya_parts` lists them
JOINT_BLOCK_NAMES = {
    "attn.to_q": "img_attn.qkv", "attn.to_k": "img_attn.qkv", "attn.to_v": "img_attn.qkv", "attn.to_out.0": "img_attn.proj",
    "attn.add_q_proj": "txt_attn.qkv", "attn.add_k_proj": "txt_attn.qkv", "attn.add_v_proj": "txt_attn.qkv",
    "attn.to_add_out": "txt_attn.proj", "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2", "norm1.linear": "img_mod.lin",
    "norm1_context.linear": "txt_mod.lin",
}  # fmt: skip
SINGLE_BLOCK_NAMES = {
    "attn.to_q": "linear1", "attn.to_k": "linear1", "attn.to_v": "linear1", "proj_mlp": "linear1", "proj_out": "linear2",
    "norm.linear": "modulation.lin",
}  # fmt: skip


def kohya_module(module: str, config) -> str:
    """A diffusers transformer module path -> Black Forest Labs' path, which sd-scripts writes for FLUX.1."""
    if m := re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)", module):
        if m[2] in JOINT_BLOCK_NAMES:
            return f"double_blocks.{m[1]}.{JOINT_BLOCK_NAMES[m[2]]}"
    elif m := re.fullmatch(r"single_transformer_blocks\.(\d+)\.(.+)", module):
        if m[2] in SINGLE_BLOCK_NAMES:
            return f"single_blocks.{m[1]}.{SINGLE_BLOCK_NAMES[m[2]]}"
    # The layers outside the blocks (embedders, final layer) have names too, but diffusers' reader of these files
    # drops their LoRAs (it names them without the `transformer.` prefix), so their export could not be checked.
    raise UsageError(
        f"transformer module {module!r} has no kohya name this tool writes; train with --target-modules attention, "
        f"attention-mlp or names of the blocks' layers to export, or pass --export none"
    )


def kohya_parts(path: str, config) -> tuple[tuple[str, int], ...]:
    """The diffusers modules BFL's fused layer `path` computes, in its order, with their output sizes; () for a layer
    that is one module in diffusers too."""
    inner = config.num_attention_heads * config.attention_head_dim
    if m := re.fullmatch(r"double_blocks\.(\d+)\.(img|txt)_attn\.qkv", path):
        names = ("to_q", "to_k", "to_v") if m[2] == "img" else ("add_q_proj", "add_k_proj", "add_v_proj")
        return tuple((f"transformer_blocks.{m[1]}.attn.{name}", inner) for name in names)
    if m := re.fullmatch(r"single_blocks\.(\d+)\.linear1", path):
        block = f"single_transformer_blocks.{m[1]}"
        mlp = int(inner * 4.0)  # diffusers' FluxSingleTransformerBlock's fixed mlp_ratio
        return (*((f"{block}.attn.{name}", inner) for name in ("to_q", "to_k", "to_v")), (f"{block}.proj_mlp", mlp))
    return ()


def diffusers_reads_kohya(config) -> bool:
    """diffusers' reader of sd-scripts' FLUX.1 files splits the single blocks' `linear1` at FLUX.1's own sizes (3072
    wide, a 12288-wide MLP): files of other widths (the tiny test model's) are read back by this tool's reader."""
    return config.num_attention_heads * config.attention_head_dim == 3072


def kohya_base_version(version: str) -> str:
    return "flux1"


FAMILY = Family(
    name="flux",
    title="FLUX.1",
    pipeline_class="FluxPipeline",
    denoiser="transformer",
    text_encoders=("text_encoder", "text_encoder_2"),
    tokenizers=("tokenizer", "tokenizer_2"),
    objective=FLOW,
    recognise=recognise,
    recognise_file=recognise_file,
    versions=("flux1-dev", "flux1-schnell"),
    version=version,
    native_resolution=native_resolution,
    encode_prompts=encode_prompts,
    denoise=denoise,
    denoiser_targets=TRANSFORMER_TARGETS,
    mlp_targets=TRANSFORMER_MLP_TARGETS + ("proj_mlp",),  # FLUX.1's single blocks: their MLP input
    text_encoder_targets=CLIP_TARGETS,
    kohya_prefixes={"transformer": "lora_unet_", "text_encoder": "lora_te1_"},  # sd-scripts' names (T5 is never trained)
    kohya_module=kohya_module,
    kohya_parts=kohya_parts,
    kohya_network_module="networks.lora_flux",
    diffusers_reads_kohya=diffusers_reads_kohya,
    kohya_base_version=kohya_base_version,
    adapters_words=("transformer", "transformer + CLIP text encoder"),
    frozen_text_encoders=("text_encoder_2",),
    long_tokenizers=("tokenizer_2",),
    resolution_multiple=16,  # 8x VAE, then 2x2 patches
    sampled_latents=sampled_latents,
    embedding_keys={"text_encoder": "clip_l", "text_encoder_2": "t5"},
)


def build_tiny(seed: int = 0):
    """A tiny FLUX.1 [dev]-shaped pipeline: one joint and one single block, CLIP (pooled) and T5 (tokens) text encoders,
    a 16-channel VAE (64 px <-> 32x32x16 latents, 256 image tokens). Random weights, seeded; the real SD tokenizer for
    CLIP and a T5 tokenizer trained in code."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    clip_tokenizer = load_clip_tokenizer()
    t5_tokenizer = t5.tiny_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels x a 2x2 patch
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # T5's width
        pooled_projection_dim=32,  # CLIP's width
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    vae = tiny_vae(seed + 1, shift_factor=0.1159, scaling_factor=0.3611)  # FLUX.1's own VAE's
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=tiny_text_encoder(clip_tokenizer, False, seed + 2),
        tokenizer=clip_tokenizer,
        text_encoder_2=t5.tiny_encoder(t5_tokenizer, 32, seed + 3),
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
    pipe.default_sample_size = 32  # type: ignore[attr-defined]  # 64 px at the tiny VAE's 2x
    return pipe
