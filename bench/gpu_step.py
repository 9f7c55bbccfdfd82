"""One DreamBooth-LoRA training step of the Stable Diffusion 1.5 architecture, timed; FLOPs and MFU.

The step timed is the tool's own: `dreambooth.training.loop.optimizer_step`, the function `dreambooth train`
runs each step (prompt encoding, noising, UNet forward, DreamBooth loss, backward, grad-norm clip, AdamW,
zero_grad, schedule step), on a run set up by the tool's `prepare` from a TrainConfig. On a GPU, `prepare`
computes the frozen parts' outputs up front as `dreambooth train` does: the VAE posteriors of the
centre-cropped photos (and the prompt embeddings when the text encoder is frozen); the timed steps reuse
them. Elsewhere the same caches are filled before timing, so every device times the steady state.

The model is an SD 1.5-shaped pipeline built from the configurations written out below, with random
weights: no download, same shapes and so the same cost as the real model (UNet 859.5 M parameters, CLIP
ViT-L/14 text encoder 123.1 M, VAE 83.7 M; the real SD 1.x tokenizer the package ships). The photos are the
package's sample subject (5 photos of a dog). With --prior (the default) the same photos stand in for class
images, so the UNet batch is 2 x --batch as with real class images, and none are drawn. --dtype is
`--mixed-precision`: frozen weights in that precision, fp32 LoRA weights, autocast.

FLOPs of one step are counted with torch.utils.flop_counter.FlopCounterMode (matmuls, convolutions,
attention; forward and backward); MFU = FLOPs/step x steps/s / the device's peak dense FLOP/s at
--dtype (a small table below, or --peak-tflops). --count-only runs the same function once with the models and
every tensor on the meta device (shapes, no storage), at fp32: the count does not depend on the precision.
The tool trains on the device accelerate picks (CUDA when there is one); --device must agree with it.

    python bench/gpu_step.py --device cuda --batch 1            # 512 px, bf16
    python bench/gpu_step.py --device cuda --batch 8 --json out.json
    python bench/gpu_step.py --device cpu --smoke               # 64 px, 1 + 2 steps: checks the code path
    python bench/gpu_step.py --count-only --batch 8             # FLOPs of one 512 px step, on any machine
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=768,
    attention_head_dim=8,
)

SD15_TEXT_ENCODER = dict(  # CLIP ViT-L/14 text tower
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)

SD15_NOISE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
# SD 1.5's own sampling scheduler (PNDM) adds these to the noise schedule
SD15_SCHEDULER = dict(**SD15_NOISE, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)

SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
)

# SDXL 1.0 base: UNet 2567 M parameters, CLIP ViT-L/14 (penultimate layer) and OpenCLIP ViT-bigG/14 text encoders
SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
    act_fn="silu",
)

SDXL_TEXT_ENCODER_2 = dict(  # OpenCLIP ViT-bigG/14 text tower, with its projection
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=1280,
)

SDXL_SCHEDULER = dict(**SD15_NOISE, timestep_spacing="leading", steps_offset=1)

# Peak dense FLOP/s (TFLOP/s, no sparsity) of common data-centre GPUs, by the precision the matmuls run at.
PEAK_TFLOPS = {
    "H200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H100": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},  # SXM
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6},
    "L4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "A10": {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2},
}

PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # --dtype -> --mixed-precision


def build_sd15_pipeline(seed: int = 0, device: torch.device | str | None = None):
    """An SD 1.5-shaped StableDiffusionPipeline with random weights and the real SD 1.x tokenizer.

    device="meta" gives the shapes without storage (no memory, no time): enough to count FLOPs."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dreambooth.families.clip import load_clip_tokenizer

    tokenizer = load_clip_tokenizer()
    torch.manual_seed(seed)
    # Only the models go on `device`: the scheduler's tables must stay real for the noise schedule to be read.
    with torch.device(device) if device is not None else contextlib.nullcontext():
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE, scaling_factor=0.18215)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                **SD15_TEXT_ENCODER,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_sdxl_pipeline(seed: int = 0, device: torch.device | str | None = None):
    """An SDXL-shaped StableDiffusionXLPipeline with random weights (the VAE's fp16-safe variant's config: no
    upcast), both text encoders on the real SD tokenizer."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, ids = clip_tokenizer()
    torch.manual_seed(seed)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        unet = UNet2DConditionModel(**SDXL_UNET)
        vae = AutoencoderKL(**{**SD15_VAE, "sample_size": 1024}, scaling_factor=0.13025, force_upcast=False)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER, **ids))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_ENCODER_2, **ids))
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
        add_watermarker=False,
    )


# FLUX.1 [dev]: transformer 11.9 B parameters (19 joint + 38 single blocks), CLIP ViT-L/14 (pooled), T5-XXL (4.8 B)
FLUX_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
T5_XXL = dict(
    vocab_size=32128,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    dropout_rate=0.0,
)
VAE_16 = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=16,
    norm_num_groups=32,
    sample_size=1024,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
# SD3.5 Medium: MMDiT-X, 24 blocks (dual attention in the first 13), 2.5 B parameters; CLIP-L, CLIP-G, T5-XXL
SD35_TRANSFORMER = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    out_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    pos_embed_max_size=384,
    qk_norm="rms_norm",
    dual_attention_layers=tuple(range(13)),
)


def with_layers(config: dict, layers: int | None) -> dict:
    """A text encoder's config with `layers` layers (None: as it is): same widths, so the same output shapes."""
    if layers is None:
        return config
    key = "num_layers" if "num_layers" in config else "num_hidden_layers"
    return {**config, key: layers}


def clip_tokenizer():
    """The real SD tokenizer the package ships, and the special-token ids a CLIP text config needs from it."""
    from dreambooth.families.clip import load_clip_tokenizer

    tokenizer = load_clip_tokenizer()
    return tokenizer, dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )


def t5_tokenizer():
    """A T5 tokenizer without a download: the embedded tiny models' (its ids all fall inside T5-XXL's vocabulary)."""
    from dreambooth.families.t5 import tiny_tokenizer

    return tiny_tokenizer(max_length=512)


def build_flux_pipeline(
    seed: int = 0, device: torch.device | str | None = None, text_layers: int | None = None, blocks: int | None = None
):
    """A FLUX.1 [dev]-shaped FluxPipeline with random weights (build it on the GPU in bf16: 17 B parameters).

    text_layers: that many layers in each text encoder (their widths, and so their outputs' shapes, unchanged);
    blocks: that many joint blocks and twice as many single blocks (a cheap check of the real widths on a CPU)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer, ids = clip_tokenizer()
    layers = {} if blocks is None else dict(num_layers=blocks, num_single_layers=2 * blocks)
    torch.manual_seed(seed)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        transformer = FluxTransformer2DModel(**{**FLUX_TRANSFORMER, **layers})
        vae = AutoencoderKL(**VAE_16, shift_factor=0.1159, scaling_factor=0.3611)
        text_encoder = CLIPTextModel(CLIPTextConfig(**with_layers(SD15_TEXT_ENCODER, text_layers), **ids))
        text_encoder_2 = T5EncoderModel(T5Config(**with_layers(T5_XXL, text_layers)))
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
    )
    return FluxPipeline(scheduler, vae, text_encoder, tokenizer, text_encoder_2, t5_tokenizer(), transformer)


def build_sd35_pipeline(
    seed: int = 0, device: torch.device | str | None = None, text_layers: int | None = None, blocks: int | None = None
):
    """An SD3.5 Medium-shaped StableDiffusion3Pipeline with random weights (text_layers, blocks: as for FLUX.1;
    the first blocks keep their dual attention)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    tokenizer, ids = clip_tokenizer()
    dual = SD35_TRANSFORMER["dual_attention_layers"]
    layers = {} if blocks is None else dict(num_layers=blocks, dual_attention_layers=tuple(i for i in dual if i < blocks))
    torch.manual_seed(seed)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        transformer = SD3Transformer2DModel(**{**SD35_TRANSFORMER, **layers})
        vae = AutoencoderKL(**VAE_16, shift_factor=0.0609, scaling_factor=1.5305)
        clip_l = CLIPTextModelWithProjection(CLIPTextConfig(**with_layers(SD15_TEXT_ENCODER, text_layers), **ids))
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**with_layers(SDXL_TEXT_ENCODER_2, text_layers), **ids))
        t5 = T5EncoderModel(T5Config(**with_layers(T5_XXL, text_layers)))
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=clip_l,
        tokenizer=tokenizer,
        text_encoder_2=clip_g,
        tokenizer_2=tokenizer,
        text_encoder_3=t5,
        tokenizer_3=t5_tokenizer(),
    )


QWEN_IMAGE_TRANSFORMER = dict(  # Qwen/Qwen-Image's transformer/config.json: 60 double-stream blocks, 20.4 B parameters
    patch_size=2,
    in_channels=64,
    out_channels=16,
    num_layers=60,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=3584,
    axes_dims_rope=(16, 56, 56),
)
QWEN_25_VL_7B_TEXT = dict(  # Qwen2.5-VL-7B-Instruct's language model (the part Qwen-Image reads)
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    max_position_embeddings=128000,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6},
)
QWEN_25_VL_7B_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    out_hidden_size=3584,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    tokens_per_second=2,
    fullatt_block_indexes=[7, 15, 23, 31],
)


def build_qwen_image_pipeline(seed: int = 0, device: torch.device | str | None = None):
    """A Qwen-Image-shaped QwenImagePipeline with random weights (build it on the GPU in bf16: 28.7 B parameters with
    the 8.3 B Qwen2.5-VL); the video VAE's default config is Qwen-Image's. The tokenizer is the tiny models' (its ids
    fall inside Qwen2.5's vocabulary, and it opens the prompt template with the 34 tokens the pipeline drops)."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from dreambooth.families.qwenimage import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        transformer = QwenImageTransformer2DModel(**QWEN_IMAGE_TRANSFORMER)
        vae = AutoencoderKLQwenImage()
        config = Qwen2_5_VLConfig(text_config={**QWEN_25_VL_7B_TEXT, **ids}, vision_config=QWEN_25_VL_7B_VISION)
        text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=256,
        max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential",
    )  # fmt: skip
    return QwenImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )


# Qwen3-4B and Qwen3-8B without their heads: Z-Image's and FLUX.2 [klein]'s text encoders
QWEN3_4B = dict(
    vocab_size=151936,
    hidden_size=2560,
    intermediate_size=9728,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    rope_theta=1000000.0,
)
QWEN3_8B = {**QWEN3_4B, "hidden_size": 4096, "intermediate_size": 12288}
# Z-Image (Turbo): single-stream S3-DiT, 30 layers + 2 + 2 refiner blocks, 3840 wide, 6.2 B parameters
Z_IMAGE_TRANSFORMER = dict(
    all_patch_size=(2,),
    all_f_patch_size=(1,),
    in_channels=16,
    dim=3840,
    n_layers=30,
    n_refiner_layers=2,
    n_heads=30,
    n_kv_heads=30,
    cap_feat_dim=2560,
    axes_dims=[32, 48, 48],
    axes_lens=[1536, 512, 512],
)
# FLUX.2 [klein] 4B (5 joint + 20 single blocks, 3072 wide) and 9B (8 + 24, 4096 wide), reading three Qwen3 layers
KLEIN_4B_TRANSFORMER = dict(
    patch_size=1,
    in_channels=128,
    num_layers=5,
    num_single_layers=20,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=3 * 2560,
    guidance_embeds=False,
)
KLEIN_9B_TRANSFORMER = {**KLEIN_4B_TRANSFORMER, "num_layers": 8, "num_single_layers": 24, "num_attention_heads": 32,
                        "joint_attention_dim": 3 * 4096}  # fmt: skip


def qwen_tokenizer():
    """A Qwen tokenizer without a download: the embedded tiny models' (its ids all fall inside Qwen3's vocabulary)."""
    from dreambooth.families.qwen import tiny_tokenizer

    return tiny_tokenizer(max_length=512)


def build_z_image_pipeline(seed: int = 0, device: torch.device | str | None = None):
    """A Z-Image-shaped ZImagePipeline with random weights: the 6.2 B transformer, Qwen3-4B, FLUX.1's VAE."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        transformer = ZImageTransformer2DModel(**Z_IMAGE_TRANSFORMER)
        vae = AutoencoderKL(**VAE_16, shift_factor=0.1159, scaling_factor=0.3611)
        text_encoder = Qwen3Model(Qwen3Config(**QWEN3_4B))
    return ZImagePipeline(FlowMatchEulerDiscreteScheduler(shift=3.0), vae, text_encoder, qwen_tokenizer(), transformer)


def build_klein_pipeline(transformer_config: dict, qwen_config: dict, seed: int, device):
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        transformer = Flux2Transformer2DModel(**transformer_config)
        vae = AutoencoderKLFlux2()  # FLUX.2's VAE: 32 channels, 8x
        text_encoder = Qwen3Model(Qwen3Config(**qwen_config))
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
    )
    return Flux2KleinPipeline(scheduler, vae, text_encoder, qwen_tokenizer(), transformer)


def build_klein_4b_pipeline(seed: int = 0, device: torch.device | str | None = None):
    """A FLUX.2 [klein] 4B-shaped Flux2KleinPipeline with random weights (3.9 B transformer, Qwen3-4B)."""
    return build_klein_pipeline(KLEIN_4B_TRANSFORMER, QWEN3_4B, seed, device)


def build_klein_9b_pipeline(seed: int = 0, device: torch.device | str | None = None):
    """A FLUX.2 [klein] 9B-shaped Flux2KleinPipeline with random weights (8.7 B transformer, Qwen3-8B)."""
    return build_klein_pipeline(KLEIN_9B_TRANSFORMER, QWEN3_8B, seed, device)


BUILD = {
    "sd15": build_sd15_pipeline,
    "sdxl": build_sdxl_pipeline,
    "flux": build_flux_pipeline,
    "sd35": build_sd35_pipeline,
    "qwen-image": build_qwen_image_pipeline,
    "z-image": build_z_image_pipeline,
    "flux2-klein-4b": build_klein_4b_pipeline,
    "flux2-klein-9b": build_klein_9b_pipeline,
}
NATIVE = {name: 512 if name == "sd15" else 1024 for name in BUILD}
# Too large to build on the host and copy per variant: built for each variant on the device, in bf16
ON_DEVICE = ("flux", "sd35", "qwen-image", "z-image", "flux2-klein-4b", "flux2-klein-9b")
# Families whose text encoder is never trained (Qwen-Image's Qwen2.5-VL, the Qwen3 of Z-Image and FLUX.2 [klein]):
# --text-encoder does not apply to them
FROZEN_TEXT = ("qwen-image", "z-image", "flux2-klein-4b", "flux2-klein-9b")


def build(args, device: torch.device):
    """The pipeline of --shape: on the meta device to count, else on the host, except the shapes built on the device."""
    if device.type == "meta":
        return BUILD[args.shape](device="meta")
    if args.shape in ON_DEVICE and device.type == "cuda":
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)  # 17 B parameters: built where they run, in the precision they run in
        try:
            return BUILD[args.shape](device=device)
        finally:
            torch.set_default_dtype(previous)
    return BUILD[args.shape]()


def sample_photos() -> list:
    from importlib import resources

    from dreambooth.training.photos import load_folder

    return load_folder(Path(str(resources.files("dreambooth") / "assets" / "sample_subject" / "dog")))


def train_config(args, work: Path, mixed_precision: str):
    from dreambooth.config import TrainConfig

    return TrainConfig(
        model=f"{args.shape}-shaped (random weights)",
        instance_prompt="a photo of sks dog",
        class_prompt="a photo of a dog",
        output_dir=str(work / "out"),
        class_dir=str(work / "class"),  # never read: the class photos are passed in; set so no cache path is derived
        resolution=args.resolution,
        center_crop=not args.vae_encode,  # a random crop is encoded anew every step; a centre crop once
        with_prior_preservation=args.prior,
        prior_mode="generated",
        rank=args.rank,
        lora_alpha=float(args.rank),
        train_text_encoder=args.text_encoder and args.shape not in FROZEN_TEXT,
        learning_rate=5e-4,
        text_encoder_lr=5e-4,
        batch_size=args.batch,
        gradient_checkpointing=args.gradient_checkpointing,
        mixed_precision=mixed_precision,
        optimizer="adamw8bit" if args.adam8bit else "adamw",
        compile=args.compile,
        base_quantization=args.base_quantization,
        max_steps=args.warmup + args.steps + 1,  # the last one is the step whose FLOPs are counted
        num_samples=0,
        seed=0,
    )


def set_up(args, device: torch.device, mixed_precision: str, work: Path, pipe=None):
    """The tool's run for these flags: its accelerator, adapters, optimiser, schedule and example stream."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    from dreambooth.models import describe, quantized_denoiser
    from dreambooth.training.setup import make_accelerator, prepare, resolved

    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    cfg = train_config(args, work, mixed_precision)
    accelerator = make_accelerator(cfg)
    if device.type == "meta":
        # The accelerator of a CPU run, told to place everything on meta: `prepare` and the step then build
        # every tensor without storage, and the FLOPs counted are those of the code that trains.
        accelerator.state.device = device
    elif accelerator.device.type != device.type:
        raise SystemExit(
            f"--device {device}: the tool trains on {accelerator.device} on this machine "
            f"(for the CPU on a CUDA machine, run with CUDA_VISIBLE_DEVICES=)"
        )
    if pipe is None:
        pipe = build(args, device)
    names = [
        n
        for n in ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae")
        if getattr(pipe, n, None) is not None
    ]
    sizes = {f"{name}_params": sum(p.numel() for p in getattr(pipe, name).parameters()) for name in names}
    base = describe(pipe, cfg.model)
    if cfg.base_quantization != "none":
        # what `dreambooth train` does after loading: the frozen denoiser's weights stored quantized
        quantized_denoiser(pipe, base.family, cfg.base_quantization, cfg.mixed_precision.dtype, accelerator.device)
    cfg = resolved(cfg, base)
    photos = sample_photos()
    run = prepare(cfg, pipe, base, photos, photos if args.prior else [], accelerator)
    if device.type != "cuda":
        # `dreambooth train` off a GPU fills the same caches lazily, as each photo first comes up; filled now,
        # the timed (and counted) steps are the steady state, as on a GPU.
        run.examples.precompute()
    sizes["lora_params"] = sum(p.numel() for p in run.trainable)
    return run, sizes


def peak_tflops(device: torch.device, dtype_name: str) -> tuple[float | None, str]:
    if device.type != "cuda":
        return None, "no peak figure for this device (pass --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    precision = dtype_name
    if dtype_name == "fp32" and torch.backends.cuda.matmul.allow_tf32:
        precision = "tf32"
    for key, table in PEAK_TFLOPS.items():  # "H100 PCIe" is looked up before "H100"
        if key in name:
            return table[precision], f"{key} {precision} dense peak"
    return None, f"{name} not in the peak table (pass --peak-tflops)"


def cpu_attention_flops() -> dict:
    """FlopCounterMode knows the CUDA attention kernels; teach it the CPU one so --smoke counts attention too."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = lambda q, k, v, *args, out_shape=None, **kwargs: (
            sdpa_flop_count(q, k, v)
        )
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = (
            lambda grad_out, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(grad_out, q, k, v)
        )
    return mapping


def count_flops(run, step: int) -> tuple[int, dict]:
    """FLOPs of one more optimiser step (forward and backward; the optimiser's element-wise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    from dreambooth.training.loop import optimizer_step

    counter = FlopCounterMode(display=False, custom_mapping=cpu_attention_flops())
    with counter:
        optimizer_step(run, step)
    by_op = {str(k): v for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return counter.get_total_flops(), by_op


def write(out: dict, path: str) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shape", default="sd15", choices=tuple(BUILD), help="the model's architecture (random weights)")
    p.add_argument(
        "--batch",
        type=int,
        default=1,
        help="instance images per step (--batch-size); with --prior as many class images join them",
    )
    p.add_argument("--resolution", type=int, default=0, help="image size in pixels (default: the shape's own, 512 or 1024)")
    p.add_argument(
        "--dtype",
        default="",
        choices=("", "fp32", "bf16", "fp16"),
        help="--mixed-precision no/bf16/fp16: precision of the frozen weights and autocast "
        "(default: bf16 on cuda, fp32 elsewhere)",
    )
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = rank)")
    p.add_argument(
        "--prior",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="prior preservation (generated mode; the sample photos stand in for class images): the UNet batch is 2 x --batch",
    )
    p.add_argument(
        "--text-encoder",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train a text-encoder LoRA too (--train-text-encoder; default: yes, except for qwen-image, whose Qwen2.5-VL "
        "is never trained)",
    )
    p.add_argument(
        "--vae-encode",
        action="store_true",
        help="--no-center-crop: each instance photo's random crop is encoded with the VAE every step "
        "(class images keep their cached centre crops)",
    )
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--adam8bit", action="store_true", help="bitsandbytes' 8-bit AdamW (--optimizer adamw8bit)")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (--compile); its FLOPs are not counted")
    p.add_argument(
        "--base-quantization",
        default="none",
        choices=("none", "nf4", "int8"),
        help="the frozen denoiser stored quantized (--base-quantization; CUDA only, bitsandbytes)",
    )
    p.add_argument(
        "--variants",
        nargs="*",
        default=[],
        help="several runs in one process, the model built once: each BATCH[:DTYPE][:8bit][:compile][:gc][:nf4|:int8], "
        "e.g. b1 b8 b8:fp16 b8:8bit b8:compile b1:nf4; --json then gets a list",
    )
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="device peak for MFU (default: looked up by GPU name)")
    p.add_argument("--smoke", action="store_true", help="64 px, 1 warm-up + 2 timed steps: checks the code path on a CPU")
    p.add_argument(
        "--count-only",
        action="store_true",
        help="only count the FLOPs of one step (forward + backward) of the tool's step, on the meta device: "
        "no compute, any machine (fp32; the count does not depend on the precision)",
    )
    p.add_argument("--json", default="", help="write the figures to this file")
    args = p.parse_args(argv)
    if args.base_quantization != "none" and args.device != "cuda":
        raise SystemExit(f"--base-quantization {args.base_quantization}: CUDA only (diffusers' bitsandbytes quantizers)")
    if args.smoke:
        args.resolution, args.warmup, args.steps = 64, 1, 2
    if args.count_only and args.shape in ("z-image", "flux2-klein-4b", "flux2-klein-9b"):
        # transformers' Qwen3 reads its attention mask's values to build the causal mask: no meta tensors there
        raise SystemExit(f"--count-only: not for --shape {args.shape} (its Qwen3 cannot run on the meta device)")
    args.resolution = args.resolution or NATIVE[args.shape]
    if args.count_only and args.shape == "qwen-image":
        raise SystemExit(
            "--count-only --shape qwen-image: Qwen2.5-VL reads its padding mask's values, which the meta device has "
            "none of; measure it on a GPU"
        )
    if args.text_encoder is None:
        args.text_encoder = args.shape not in FROZEN_TEXT
    if args.resolution % 64:
        raise SystemExit("--resolution must be a multiple of 64 (three 2x downsamplings of the 1/8 latents)")
    return args


def variant(args, spec: str):
    """`args` with one --variants entry applied: b8:fp16:8bit -> --batch 8 --dtype fp16 --adam8bit."""
    args = argparse.Namespace(**vars(args))
    for part in spec.split(":"):
        if part.startswith("b") and part[1:].isdigit():
            args.batch = int(part[1:])
        elif part in PRECISION:
            args.dtype = part
        elif part == "8bit":
            args.adam8bit = True
        elif part == "compile":
            args.compile = True
        elif part == "gc":
            args.gradient_checkpointing = True
        elif part in ("nf4", "int8"):
            args.base_quantization = part
        else:
            raise SystemExit(f"--variants {spec}: unknown part {part!r} (bN, fp32/bf16/fp16, 8bit, compile, gc, nf4, int8)")
    if args.base_quantization != "none" and args.device != "cuda":
        raise SystemExit(f"--variants {spec}: quantization runs on CUDA only")
    args.name = spec
    return args


def measure(args, pipe=None) -> dict:
    """Set up the tool's run for `args` on `pipe` (built when None), time its steps, count one step's FLOPs."""
    device = torch.device("meta" if args.count_only else args.device)
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    if device.type == "meta":
        # accelerate wraps the models in autocast for its device type, and there is none for meta
        dtype_name = "fp32"
    n = args.batch * (2 if args.prior else 1)

    from dreambooth import threads
    from dreambooth.errors import UsageError
    from dreambooth.training.loop import optimizer_step

    with tempfile.TemporaryDirectory(prefix="gpu-step-") as tmp:
        t0 = time.perf_counter()
        try:
            run, sizes = set_up(args, device, PRECISION[dtype_name], Path(tmp), pipe)
        except UsageError as e:
            raise SystemExit(str(e)) from None
        build_s = time.perf_counter() - t0

        if args.count_only:
            flops, by_op = count_flops(run, 0)
            return {
                "count_only": True,
                "shape": args.shape,
                "resolution": args.resolution,
                "batch": args.batch,
                "prior": args.prior,
                "unet_batch": n,
                "text_encoder": args.text_encoder,
                "vae_encode": args.vae_encode,
                "rank": args.rank,
                **sizes,
                "flops_per_step": flops,
                "flops_by_op": by_op,
                "note": "dreambooth.training.loop.optimizer_step on the meta device, fp32; attention is counted as its "
                "math decomposition (bmm): the fused kernels' formulas give the same forward count, and for the "
                "backward add the scores they recompute, so a GPU or CPU run counts slightly more",
            }

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        # on a CPU, the threads `train` would use (OMP_NUM_THREADS when set, else the free cores), taken again
        # between steps as `train`'s loop does
        with threads.workload(0):
            t0 = time.perf_counter()
            for i in range(args.warmup):
                threads.refresh()
                optimizer_step(run, i)
            sync()
            warmup_s = time.perf_counter() - t0

            t0 = time.perf_counter()
            for i in range(args.warmup, args.warmup + args.steps):
                threads.refresh()
                loss = optimizer_step(run, i)
            sync()
            timed_s = time.perf_counter() - t0
        loss_value = float(loss.detach())  # read once: reading it every step would wait for the device each time
        cuda_peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None

        # FlopCounterMode cannot see inside a compiled graph: a compiled run's FLOPs are those of the same run uncompiled
        # nor into bitsandbytes' kernels: a quantized base's FLOPs are the full-precision one's
        counted = not args.compile and args.base_quantization == "none"
        flops, by_op = count_flops(run, args.warmup + args.steps) if counted else (0, {})
        sync()
        del run

    steps_per_s = args.steps / timed_s
    peak, peak_note = (args.peak_tflops, "--peak-tflops") if args.peak_tflops else peak_tflops(device, dtype_name)
    achieved = flops * steps_per_s
    return {
        "name": getattr(args, "name", ""),
        "shape": args.shape,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": dtype_name,
        "resolution": args.resolution,
        "batch": args.batch,
        "prior": args.prior,
        "unet_batch": n,
        "text_encoder": args.text_encoder,
        "vae_encode": args.vae_encode,
        "gradient_checkpointing": args.gradient_checkpointing,
        "adam8bit": args.adam8bit,
        "compile": args.compile,
        "base_quantization": args.base_quantization,
        "rank": args.rank,
        **sizes,
        "step": "dreambooth.training.loop.optimizer_step",
        "build_s": build_s,
        "warmup_steps": args.warmup,
        "warmup_s": warmup_s,
        "timed_steps": args.steps,
        "timed_s": timed_s,
        "steps_per_s": steps_per_s,
        "s_per_step": 1 / steps_per_s,
        "images_per_s": steps_per_s * n,
        "flops_per_step": flops or None,
        "flops_by_op": by_op,
        "achieved_tflops": achieved / 1e12 if flops else None,
        "peak_tflops": peak,
        "peak_note": peak_note,
        "mfu": achieved / (peak * 1e12) if peak and flops else None,
        "cuda_max_allocated_mib": cuda_peak,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "final_loss": loss_value,
        "smoke": args.smoke,
        "command": " ".join([sys.executable] + sys.argv),
    }


def main() -> None:
    args = parse_args()
    if not args.variants:
        out = measure(args)
        print(json.dumps({k: v for k, v in out.items() if k != "flops_by_op"}, indent=1))
        write(out, args.json)
        return
    import copy
    import gc

    t0 = time.perf_counter()
    built = None
    if args.count_only or args.shape not in ON_DEVICE:
        built = BUILD[args.shape](device="meta" if args.count_only else None)
        print(f"{args.shape}-shaped pipeline built in {time.perf_counter() - t0:.1f} s", flush=True)
    results = []
    for spec in args.variants:
        one = variant(args, spec)
        try:
            out = measure(one, copy.deepcopy(built) if built is not None else None)
        except Exception as e:  # one variant failing (a missing package, memory) leaves the others' figures
            out = {"name": spec, "error": f"{type(e).__name__}: {e}"}
        results.append(out)
        print(json.dumps({k: v for k, v in out.items() if k != "flops_by_op"}, indent=1), flush=True)
        write(results, args.json)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if any("error" in r for r in results):
        raise SystemExit(f"failed: {', '.join(r['name'] for r in results if 'error' in r)}")


if __name__ == "__main__":
    main()
