"""Z-Image (Turbo and base): a single-stream rectified-flow transformer (S3-DiT) on 2x2 patches of FLUX.1's 16-channel
VAE latents. The prompt, wrapped in Qwen3's chat template, is read as the hidden states of Qwen3's second-to-last
layer, only its real tokens (no padding): each example's caption is a sequence of its own length. The transformer
is given the time as 1 - noise level and predicts the negated velocity (x - noise); a fixed shift of 3."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UsageError
from ..objectives.flow import FLOW
from . import qwen
from .base import Family, PromptEmbeddings, checkpoint_has
from .mmdit import tiny_vae

# the attention projections of every block (noise refiner, context refiner, main layers), as diffusers' script targets
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
MLP_TARGETS = ("feed_forward.w1", "feed_forward.w2", "feed_forward.w3")  # the blocks' gated feed-forward layers
QWEN3_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def recognise(pipe) -> bool:
    transformer = getattr(pipe, "transformer", None)
    return transformer is not None and type(transformer).__name__ == "ZImageTransformer2DModel"


def recognise_file(path: Path) -> bool:
    """Z-Image's single files keep the transformer's padding token (`x_pad_token`), bare or under ComfyUI's prefix."""
    return any(checkpoint_has(path, prefix) for prefix in ("x_pad_token", "model.diffusion_model.x_pad_token"))


def version(pipe) -> str:
    """Z-Image and Z-Image-Turbo share one architecture (3840 wide, 30 layers): a LoRA of one loads on the other."""
    config = pipe.transformer.config
    return "z-image" if (config.dim, config.n_layers) == (3840, 30) else ""


def native_resolution(pipe) -> int:
    """ZImagePipeline draws 1024 px unless told; the tiny model says its own size."""
    return getattr(pipe, "default_sample_size", 1024 // pipe.vae_scale_factor) * pipe.vae_scale_factor


def encode_prompts(tokenizers: list, encoders: list, prompts: list[str], device) -> PromptEmbeddings:
    """As ZImagePipeline computes them: Qwen3's second-to-last hidden states of the chat-wrapped prompt ("hidden",
    padded to the tokenizer's length) and which of its tokens are real ("mask"); the transformer reads the real
    ones alone, so the padding length changes nothing."""
    (tokenizer,), (encoder,) = tokenizers, encoders
    if encoder is None:
        return {}
    inputs = tokenizer(
        qwen.chat_prompts(tokenizer, prompts, thinking=True),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    mask = inputs.attention_mask.to(device).bool()
    hidden = encoder(input_ids=inputs.input_ids.to(device), attention_mask=mask, output_hidden_states=True).hidden_states[-2]
    return {"hidden": hidden, "mask": mask}


def captions(prompts: PromptEmbeddings) -> list[torch.Tensor]:
    """Each example's caption tokens without its padding, as the transformer takes them."""
    return [hidden[mask.bool()] for hidden, mask in zip(prompts["hidden"], prompts["mask"])]


def denoise(
    transformer, noisy: torch.Tensor, timesteps: torch.Tensor, prompts: PromptEmbeddings, geometry: torch.Tensor
) -> torch.Tensor:
    """The velocity for `noisy` (B, C, H, W) at `timesteps` (0-1000): the transformer takes a list of (C, 1, H, W)
    frames and the time running the other way (1 at the clean image), and predicts x - noise."""
    frames = list(noisy.unsqueeze(2).unbind(0))
    out = transformer(frames, (1000 - timesteps) / 1000, captions(prompts), return_dict=False)[0]
    return -torch.stack(out).squeeze(2)


def kohya_module(module: str, config) -> str:
    raise UsageError("--export kohya: Z-Image has no kohya layout; ComfyUI loads pytorch_lora_weights.safetensors as it is")


def kohya_base_version(version: str) -> str:
    return "z-image"


FAMILY = Family(
    name="z-image",
    title="Z-Image",
    pipeline_class="ZImagePipeline",
    denoiser="transformer",
    text_encoders=("text_encoder",),
    tokenizers=("tokenizer",),
    objective=FLOW,
    recognise=recognise,
    recognise_file=recognise_file,
    versions=("z-image",),
    version=version,
    native_resolution=native_resolution,
    encode_prompts=encode_prompts,
    denoise=denoise,
    denoiser_targets=TARGETS,
    mlp_targets=MLP_TARGETS,
    text_encoder_targets=QWEN3_TARGETS,
    # ComfyUI's model_lora_keys_unet, for its Z-Image model (Lumina2 there): `key_map["transformer.{}".format(key_lora)]
    # = to` over diffusers' module names (comfy.utils.z_image_to_diffusers): the diffusers file is ComfyUI's layout
    kohya_prefixes={},
    comfyui_reads_diffusers_file=True,
    kohya_module=kohya_module,
    kohya_base_version=kohya_base_version,
    adapters_words=("transformer", "transformer"),
    # Qwen3 (4 B) is computed once per prompt and leaves the GPU; diffusers' loader reads transformer LoRAs alone
    frozen_text_encoders=("text_encoder",),
    long_tokenizers=("tokenizer",),
    resolution_multiple=16,  # 8x VAE, then 2x2 patches
    embedding_keys={"text_encoder": "qwen3"},
)


def build_tiny(seed: int = 0):
    """A tiny Z-Image-shaped pipeline: one noise-refiner, one context-refiner and two main blocks 32 wide, a 2-layer
    Qwen3 (32 wide) with the tiny Qwen tokenizer, FLUX.1's VAE's shape (64 px <-> 32x32x16 latents, 256 tokens of 2x2
    patches). Random weights, seeded."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    tokenizer = qwen.tiny_tokenizer()
    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=32,  # Qwen3's width
        axes_dims=[4, 6, 6],  # the head's 16 dimensions: caption/frame position, height, width
        axes_lens=[1024, 64, 64],
    )
    pipe = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),  # Z-Image-Turbo's
        vae=tiny_vae(seed + 1, shift_factor=0.1159, scaling_factor=0.3611),  # FLUX.1's VAE, which Z-Image uses
        text_encoder=qwen.tiny_qwen3(tokenizer, 32, 2, seed + 2),
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.default_sample_size = 32  # type: ignore[attr-defined]  # 64 px at the tiny VAE's 2x
    return pipe
