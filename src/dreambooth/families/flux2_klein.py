"""FLUX.2 [klein] (4B, 9B; distilled and base): a rectified-flow transformer (double-stream, then single-stream blocks
whose attention and MLP input are one fused layer) on 2x2 patches of a 32-channel VAE's latents, normalised by the
VAE's batch-norm statistics of those patches. The prompt, in Qwen3's chat template without thinking, is read as the
hidden states of three of Qwen3's layers side by side, padding included; four-axis rotary positions for text and
image tokens; no guidance input."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UsageError
from ..objectives.flow import FLOW
from . import qwen
from .base import Family, PromptEmbeddings, checkpoint_has
from .flux import unwrapped
from .mmdit import TRANSFORMER_TARGETS, native_resolution

# Qwen3's layers whose hidden states the pipeline reads (Flux2KleinPipeline's `text_encoder_out_layers`)
QWEN3_LAYERS = (9, 18, 27)
# the joint blocks' attention projections (both streams); the single blocks' fused q/k/v/MLP input and their output
TARGETS = (*TRANSFORMER_TARGETS, "to_qkv_mlp_proj", "attn.to_out")
MLP_TARGETS = ("ff.linear_in", "ff.linear_out", "ff_context.linear_in", "ff_context.linear_out")
QWEN3_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
RELEASED = {(5, 20, 3072): "flux2-klein-4b", (8, 24, 4096): "flux2-klein-9b"}  # joint, single blocks; width


def recognise(pipe) -> bool:
    """FLUX.2's transformer read with a Qwen3 ([klein]); FLUX.2 [dev] reads Mistral."""
    transformer, encoder = getattr(pipe, "transformer", None), getattr(pipe, "text_encoder", None)
    return type(transformer).__name__ == "Flux2Transformer2DModel" and type(encoder).__name__.startswith("Qwen3")


def recognise_file(path: Path) -> bool:
    """FLUX.2's single files name its shared modulation (`double_stream_modulation_img`), which FLUX.1 has not."""
    return any(
        checkpoint_has(path, prefix)
        for prefix in ("double_stream_modulation_img.", "model.diffusion_model.double_stream_modulation_img.")
    )


def version(pipe) -> str:
    """[klein] 4B and 9B by their blocks and width; a distilled model and its base share them (and their LoRAs)."""
    config = pipe.transformer.config
    shape = (config.num_layers, config.num_single_layers, config.num_attention_heads * config.attention_head_dim)
    return RELEASED.get(shape, "")


def encode_prompts(tokenizers: list, encoders: list, prompts: list[str], device) -> PromptEmbeddings:
    """As Flux2KleinPipeline computes them: the hidden states of Qwen3's layers QWEN3_LAYERS side by side for every
    token of the chat-wrapped prompt, padded to the tokenizer's length (the transformer reads the padding too)."""
    (tokenizer,), (encoder,) = tokenizers, encoders
    if encoder is None:
        return {}
    inputs = tokenizer(
        qwen.chat_prompts(tokenizer, prompts, thinking=False),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    out = encoder(
        input_ids=inputs.input_ids.to(device),
        attention_mask=inputs.attention_mask.to(device),
        output_hidden_states=True,
        use_cache=False,
    )
    return {"hidden": torch.cat([out.hidden_states[k] for k in QWEN3_LAYERS], dim=-1)}


def denoise(
    transformer, noisy: torch.Tensor, timesteps: torch.Tensor, prompts: PromptEmbeddings, geometry: torch.Tensor
) -> torch.Tensor:
    """The velocity for `noisy` (B, C, H, W, on the VAE's grid) at `timesteps` (0-1000): given as 2x2 patches, one token
    each, with their (t, h, w, l) positions; the text tokens at (0, 0, 0, l)."""
    from diffusers import Flux2KleinPipeline as Pipe

    patches = Pipe._patchify_latents(noisy)
    image_ids = Pipe._prepare_latent_ids(patches).to(noisy.device)
    hidden = prompts["hidden"]
    guidance = prompts.get("guidance") if unwrapped(transformer).config.guidance_embeds else None
    out = transformer(
        hidden_states=Pipe._pack_latents(patches),
        encoder_hidden_states=hidden,
        timestep=timesteps / 1000,
        img_ids=image_ids,
        txt_ids=Pipe._prepare_text_ids(hidden).to(noisy.device),
        guidance=guidance,
        return_dict=False,
    )[0]
    return Pipe._unpatchify_latents(Pipe._unpack_latents_with_ids(out, image_ids, *patches.shape[-2:]))


def patch_statistics(vae) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel mean and std of the 2x2-patchified latents: FLUX.2's VAE normalises its latents with the
    statistics of its batch norm instead of a shift and scale."""
    bn = vae.bn
    return bn.running_mean.view(1, -1, 1, 1), torch.sqrt(bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)


def by_patch_statistics(vae, latents: torch.Tensor, inverse: bool) -> torch.Tensor:
    """Latents normalised (or, `inverse`, restored) as FLUX.2's pipeline does it, on the 2x2-patchified latents, and
    given back on the VAE's own grid (so that masks and crops stay in the VAE's cells)."""
    from diffusers import Flux2KleinPipeline as Pipe

    mean, std = patch_statistics(vae)
    patches = Pipe._patchify_latents(latents)
    mean, std = mean.to(patches.device, patches.dtype), std.to(patches.device, patches.dtype)
    patches = patches * std + mean if inverse else (patches - mean) / std
    return Pipe._unpatchify_latents(patches)


def normalised_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    return by_patch_statistics(vae, latents, inverse=False)


def decoded_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    from .. import autoencoder

    return autoencoder.decode_as_they_are(vae, by_patch_statistics(vae, latents.to(autoencoder.input_dtype(vae)), inverse=True))


def sampled_latents(pipe, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Flux2KleinPipeline returns the VAE's own latents with output_type="latent": normalised again for decoding."""
    return normalised_latents(pipe.vae, latents)


def kohya_module(module: str, config) -> str:
    raise UsageError(
        "--export kohya: FLUX.2 [klein] has no kohya layout here; ComfyUI loads pytorch_lora_weights.safetensors as it is"
    )


def kohya_base_version(version: str) -> str:
    return "flux2"


FAMILY = Family(
    name="flux2-klein",
    title="FLUX.2 [klein]",
    pipeline_class="Flux2KleinPipeline",
    denoiser="transformer",
    text_encoders=("text_encoder",),
    tokenizers=("tokenizer",),
    objective=FLOW,
    recognise=recognise,
    recognise_file=recognise_file,
    versions=tuple(RELEASED.values()),
    version=version,
    native_resolution=native_resolution,
    encode_prompts=encode_prompts,
    denoise=denoise,
    denoiser_targets=TARGETS,
    mlp_targets=MLP_TARGETS,
    text_encoder_targets=QWEN3_TARGETS,
    # ComfyUI runs FLUX.2 as a subclass of its FLUX model, whose key map takes `transformer.<diffusers module>` through
    # comfy.utils.flux_to_diffusers, which names FLUX.2's single blocks' `attn.to_qkv_mlp_proj` and `attn.to_out`: every
    # attention and feed-forward module lands whole, or as its third of a fused qkv. Of `all-linear`, ComfyUI (v0.19.3)
    # drops FLUX.2's shared modulation and timestep layers, for which its map has no diffusers name.
    kohya_prefixes={},
    comfyui_reads_diffusers_file=True,
    comfyui_unmapped={  # adapted only by --target-modules all-linear
        "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer",
        "time_guidance_embed.timestep_embedder.linear_2": "time_in.out_layer",
        "double_stream_modulation_img.linear": "double_stream_modulation_img.lin",
        "double_stream_modulation_txt.linear": "double_stream_modulation_txt.lin",
        "single_stream_modulation.linear": "single_stream_modulation.lin",
    },
    kohya_module=kohya_module,
    kohya_base_version=kohya_base_version,
    adapters_words=("transformer", "transformer"),
    # Qwen3 (4 B / 8 B) is computed once per prompt and leaves the GPU; diffusers' loader reads transformer LoRAs alone
    frozen_text_encoders=("text_encoder",),
    long_tokenizers=("tokenizer",),
    resolution_multiple=16,  # 8x VAE, then 2x2 patches
    sampled_latents=sampled_latents,
    normalised_latents=normalised_latents,
    decoded_latents=decoded_latents,
    embedding_keys={"text_encoder": "qwen3"},
)


def tiny_vae(seed: int):
    """FLUX.2's VAE's shape, small: 64 px <-> 32x32x32 latents, random weights and batch-norm statistics (seeded),
    so that normalising the patches is no identity."""
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(seed)
    vae = AutoencoderKLFlux2(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=32,
        norm_num_groups=32,
        sample_size=64,
    )
    statistics = vae.bn  # type: ignore[attr-defined]  # set in __init__, which the stubs do not read
    statistics.running_mean.copy_(0.1 * torch.randn(128))
    statistics.running_var.copy_(0.5 + torch.rand(128))
    return vae


def build_tiny(seed: int = 0):
    """A tiny FLUX.2 [klein]-shaped pipeline: one joint and one single block 32 wide, a 28-layer Qwen3 16 wide (the
    pipeline reads its layers 9, 18 and 27) with the tiny Qwen tokenizer, a 32-channel VAE (64 px <-> 256 tokens of
    2x2 patches). Random weights, seeded."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel

    tokenizer = qwen.tiny_tokenizer()
    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=128,  # 32 latent channels x a 2x2 patch
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * 16,  # three of Qwen3's layers side by side
        timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
    )
    pipe = Flux2KleinPipeline(
        scheduler=scheduler,
        vae=tiny_vae(seed + 1),
        text_encoder=qwen.tiny_qwen3(tokenizer, 16, 28, seed + 2),
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.default_sample_size = 32  # type: ignore[attr-defined]  # 64 px at the tiny VAE's 2x
    return pipe
