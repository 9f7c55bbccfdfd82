"""One DreamBooth-LoRA training step of the Stable Diffusion 1.5 architecture, timed; FLOPs and MFU.

The SD 1.5 UNet (and, unless --no-text-encoder, its CLIP ViT-L/14 text encoder) are built from their
configurations written out below, with random weights: no download, same shapes and so the same
cost as the real model. LoRA adapters (peft, rank 16) go on the UNet's attention projections
(to_q, to_k, to_v, to_out.0) and the text encoder's (q_proj, k_proj, v_proj, out_proj), as
`dreambooth train --train-text-encoder` does. The frozen weights are cast to --dtype, the LoRA
weights stay fp32 and the step runs under autocast (what `--mixed-precision bf16` does).

One step = text encoder forward (with LoRA) -> noise latents at random timesteps -> UNet forward ->
MSE loss (instance + prior halves when --prior) -> backward -> grad-norm clip -> AdamW -> zero_grad.
Latents are random (the tool encodes each photo with the VAE once and reuses it; --vae-encode adds
an SD 1.5 VAE encode of 512 px images to every step, as diffusers' script does).

FLOPs of one step are counted with torch.utils.flop_counter.FlopCounterMode (matmuls, convolutions,
attention; forward and backward); MFU = FLOPs/step x steps/s / the device's peak dense FLOP/s at
--dtype (a small table below, or --peak-tflops).

    python bench/gpu_step.py --device cuda --batch 1            # 512 px, bf16
    python bench/gpu_step.py --device cuda --batch 8 --json out.json
    python bench/gpu_step.py --device cpu --smoke               # tiny resolution, 2 steps: checks the code path
    python bench/gpu_step.py --count-only --batch 8             # FLOPs of one 512 px step, on any machine
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import time

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

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


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
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = (
            lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v))
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = (
            lambda grad_out, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(grad_out, q, k, v))
    return mapping


def add_lora(model: torch.nn.Module, rank: int, targets: list[str]) -> list[torch.nn.Parameter]:
    from peft import LoraConfig

    model.requires_grad_(False)
    model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=targets))
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return params


def build(args, device: torch.device, dtype: torch.dtype):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    # On "meta" (--count-only) the models have shapes but no storage: FLOPs are counted, nothing is computed.
    where = torch.device("meta") if device.type == "meta" else contextlib.nullcontext()
    with where:
        unet = UNet2DConditionModel(**SD15_UNET)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER)) if args.text_encoder else None
        vae = AutoencoderKL(**SD15_VAE) if args.vae_encode else None
    unet.to(device, dtype)
    groups = [{"params": add_lora(unet, args.rank, UNET_TARGETS), "lr": 5e-4}]
    unet.train()
    if text_encoder is not None:
        text_encoder.to(device, dtype)
        groups.append({"params": add_lora(text_encoder, args.rank, TEXT_ENCODER_TARGETS), "lr": 5e-4})
        text_encoder.train()
    if vae is not None:
        vae.to(device, dtype).requires_grad_(False).eval()
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if text_encoder is not None:
            text_encoder.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(groups, weight_decay=1e-2, eps=1e-8, fused=device.type == "cuda") if device.type != "meta" else None
    scheduler = DDPMScheduler(**SD15_NOISE)
    count = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
    trainable = sum(p.numel() for g in groups for p in g["params"])
    sizes = {"unet_params": count(unet), "text_encoder_params": count(text_encoder), "vae_params": count(vae), "lora_params": trainable}
    return unet, text_encoder, vae, optimizer, scheduler, [p for g in groups for p in g["params"]], sizes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=1, help="instance images per step; with --prior as many class images join them")
    p.add_argument("--resolution", type=int, default=512, help="image size in pixels (latents are 1/8 of it)")
    p.add_argument("--dtype", default="", choices=("", "fp32", "bf16", "fp16"), help="precision of the frozen weights and autocast (default: bf16 on cuda, fp32 elsewhere)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--prior", action=argparse.BooleanOptionalAction, default=True, help="prior preservation: the UNet batch is 2 x --batch")
    p.add_argument("--text-encoder", action=argparse.BooleanOptionalAction, default=True, help="train a text-encoder LoRA too")
    p.add_argument("--vae-encode", action="store_true", help="encode fresh 512 px images with the VAE every step")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="device peak for MFU (default: looked up by GPU name)")
    p.add_argument("--smoke", action="store_true", help="64 px, 1 warm-up + 2 timed steps: checks the code path on a CPU")
    p.add_argument("--count-only", action="store_true", help="only count the FLOPs of one step (forward + backward), on the meta device: no compute, any machine")
    p.add_argument("--json", default="", help="write the figures to this file")
    args = p.parse_args()
    if args.smoke:
        args.resolution, args.warmup, args.steps = 64, 1, 2
    if args.resolution % 64:
        raise SystemExit("--resolution must be a multiple of 64 (three 2x downsamplings of the 1/8 latents)")
    device = torch.device("meta" if args.count_only else args.device)
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]

    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    t0 = time.perf_counter()
    unet, text_encoder, vae, optimizer, scheduler, params, sizes = build(args, device, dtype)
    build_s = time.perf_counter() - t0
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    n = args.batch * (2 if args.prior else 1)
    latent = args.resolution // 8
    gen = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, SD15_TEXT_ENCODER["vocab_size"], (n, 77), generator=gen).to(device)
    latents0 = torch.randn(n, 4, latent, latent, generator=gen).to(device, dtype)
    pixels = torch.rand(n, 3, args.resolution, args.resolution, generator=gen).to(device, dtype) * 2 - 1 if vae is not None else None
    hidden_fixed = torch.randn(n, 77, SD15_TEXT_ENCODER["hidden_size"], generator=gen).to(device, dtype)

    def step(update: bool = True):
        amp = (torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32) if device.type != "meta"
               else contextlib.nullcontext())
        with amp:
            if vae is not None:
                with torch.no_grad():
                    latents = vae.encode(pixels).latent_dist.sample() * 0.18215
            else:
                latents = latents0
            hidden = text_encoder(ids)[0] if text_encoder is not None else hidden_fixed
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, 1000, (n,), device=device)
            noisy = scheduler.add_noise(latents, noise, timesteps)
            pred = unet(noisy, timesteps, hidden).sample
        if args.prior:
            pred, pred_prior = pred.float().chunk(2)
            target, target_prior = noise.float().chunk(2)
            loss = torch.nn.functional.mse_loss(pred, target) + torch.nn.functional.mse_loss(pred_prior, target_prior)
        else:
            loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        if not update:  # --count-only: the optimiser adds no matmul/conv/attention FLOPs
            loss.backward()
            return loss
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    from torch.utils.flop_counter import FlopCounterMode

    if args.count_only:
        counter = FlopCounterMode(display=False, custom_mapping=cpu_attention_flops())
        with counter:
            step(update=False)
        by_op = {str(k): v for k, v in counter.get_flop_counts().get("Global", {}).items()}
        out = {"count_only": True, "resolution": args.resolution, "batch": args.batch, "prior": args.prior, "unet_batch": n,
               "text_encoder": args.text_encoder, "vae_encode": args.vae_encode, "rank": args.rank, **sizes,
               "flops_per_step": counter.get_total_flops(), "flops_by_op": by_op,
               "note": "meta device: attention counted as its math decomposition (bmm); same count as the fused kernels' formulas"}
        print(json.dumps(out, indent=1))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(out, f, indent=2)
        return

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    timed_s = time.perf_counter() - t0
    loss_value = float(loss.detach())
    cuda_peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None

    counter = FlopCounterMode(display=False, custom_mapping=cpu_attention_flops())
    with counter:
        step()
    sync()
    flops = counter.get_total_flops()
    by_op = {str(k): v for k, v in counter.get_flop_counts().get("Global", {}).items()}

    steps_per_s = args.steps / timed_s
    peak, peak_note = (args.peak_tflops, "--peak-tflops") if args.peak_tflops else peak_tflops(device, dtype_name)
    achieved = flops * steps_per_s
    out = {
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
        "rank": args.rank,
        **sizes,
        "build_s": build_s,
        "warmup_steps": args.warmup,
        "warmup_s": warmup_s,
        "timed_steps": args.steps,
        "timed_s": timed_s,
        "steps_per_s": steps_per_s,
        "s_per_step": 1 / steps_per_s,
        "images_per_s": steps_per_s * n,
        "flops_per_step": flops,
        "flops_by_op": by_op,
        "achieved_tflops": achieved / 1e12,
        "peak_tflops": peak,
        "peak_note": peak_note,
        "mfu": achieved / (peak * 1e12) if peak else None,
        "cuda_max_allocated_mib": cuda_peak,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "final_loss": loss_value,
        "smoke": args.smoke,
        "command": " ".join([sys.executable] + sys.argv),
    }
    print(json.dumps({k: v for k, v in out.items() if k != "flops_by_op"}, indent=1))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
