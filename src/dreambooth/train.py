"""DreamBooth + LoRA training: setup -> loop -> step.

Nothing random lives in process state: each example's photo, flip, crop, noise and timestep come from a
generator keyed by its position in the stream (latents.py), LoRA dropout from (seed, micro-step). So a run
resumed from a checkpoint continues exactly as an uninterrupted one would, and N data-parallel processes
train what one process with N times the batch would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import atomic, checkpoint, report
from .class_images import bank_dir, ensure_class_images
from .config import TrainConfig, check_train, to_yaml
from .data import load_folder
from .errors import TrainingError, UsageError, warn
from .identifier import check_identifier
from .latents import Examples, adapters_off
from .lora import add_lora, save_lora
from .loss import dreambooth_loss, finite_loss, snr_weights, training_target
from .models import describe, load_pipeline, load_vae
from .sampling import draw
from .stopping import stop_on_ctrl_c


# ---------------------------------------------------------------- setup

def check_paths(cfg: TrainConfig) -> None:
    out = Path(cfg.output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir {cfg.output_dir}: is a file; pass a folder path")
    if cfg.class_dir and Path(cfg.class_dir).expanduser().is_file():
        raise UsageError(f"--class-dir {cfg.class_dir}: is a file; pass a folder path")


def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator

    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise UsageError("--mixed-precision fp16: needs a CUDA GPU; use bf16 or no on this machine")
    from accelerate.state import AcceleratorState, GradientState

    # accelerate keeps its settings in process-wide singletons; a second run in the same process
    # (Python API, tests, a UI worker) may ask for another precision or accumulation.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    # cpu=True lets accelerate run several CPU processes (gloo) when launched with torchrun / accelerate launch
    return Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                       cpu=not torch.cuda.is_available())


def make_optimizer(cfg: TrainConfig, param_groups: list[dict], device: torch.device):
    if cfg.use_8bit_adam:
        if device.type == "cuda":
            try:
                import bitsandbytes as bnb

                return bnb.optim.AdamW8bit(param_groups, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                           weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
            except ImportError:
                warn("--use-8bit-adam: bitsandbytes is not installed (pip install bitsandbytes); using AdamW")
        else:
            warn("--use-8bit-adam: bitsandbytes needs CUDA; using AdamW on this device")
    # fused kernels on CUDA; elsewhere foreach (one op over all tensors) beats a Python loop over ~200 LoRA tensors
    cuda = device.type == "cuda"
    return torch.optim.AdamW(param_groups, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.adam_weight_decay,
                             eps=cfg.adam_epsilon, fused=cuda, foreach=not cuda)


def setup(cfg: TrainConfig, pipe, accelerator):
    """LoRA adapters, optimiser and schedule; frozen parts moved to the device in the compute dtype."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
    unet, vae = pipe.unet, pipe.vae
    encoders = text_encoders(pipe)
    for m in [unet, vae, *encoders.values()]:
        m.requires_grad_(False)
        m.to(accelerator.device, dtype=weight_dtype)
    torch.manual_seed(cfg.seed)  # LoRA's initial weights
    groups = [{"params": add_lora(unet, cfg.rank, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules), "lr": cfg.learning_rate}]
    trained = {"unet": unet}
    if cfg.train_text_encoder:
        for name, encoder in encoders.items():
            params = add_lora(encoder, cfg.rank, cfg.lora_alpha, cfg.lora_dropout, cfg.text_encoder_target_modules)
            groups.append({"params": params, "lr": cfg.text_encoder_lr})
            trained[name] = encoder
    for m in trained.values():
        m.train()
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        for name in set(trained) - {"unet"}:
            trained[name].gradient_checkpointing_enable()
    optimizer = make_optimizer(cfg, groups, accelerator.device)
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=cfg.max_steps)
    if accelerator.device.type == "cuda":
        unet.to(memory_format=torch.channels_last)  # cuDNN's fast convolution layout
    *models, optimizer = accelerator.prepare(*trained.values(), optimizer)
    if cfg.compile:
        models[0] = torch.compile(models[0])
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    return {"models": dict(zip(trained, models)), "optimizer": optimizer, "lr_scheduler": lr_scheduler,
            "noise_scheduler": noise_scheduler, "weight_dtype": weight_dtype}


def default_class_dir(cfg: TrainConfig, info: dict) -> str:
    if not (cfg.with_prior_preservation and cfg.prior_mode == "generated"):
        return ""
    resolution = cfg.resolution or info["native_resolution"]
    return str(bank_dir(cfg.model, cfg.vae, cfg.class_prompt, resolution, cfg.class_image_steps, cfg.guidance_scale, cfg.seed))


def sampling_precision(accelerator):
    """Class images on a GPU are drawn in fp16: twice as fast, and the images are the same to the eye."""
    if accelerator.device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext


def text_encoders(pipe) -> dict:
    """The pipeline's text encoders by component name: one for SD 1.x/2.x, two for SDXL."""
    return {name: getattr(pipe, name) for name in ("text_encoder", "text_encoder_2") if getattr(pipe, name, None) is not None}


# ---------------------------------------------------------------- one step

def step_loss(cfg: TrainConfig, unet, noise_scheduler, examples: Examples, micro_step: int):
    """Loss of one micro-batch: noise the latents at random timesteps, predict, compare with the target."""
    batch = examples.batch(micro_step)
    latents = batch.latents
    noise = torch.cat([torch.randn((1, *latents.shape[1:]), generator=g) for g in batch.rngs]).to(latents.device, latents.dtype)
    steps = noise_scheduler.config.num_train_timesteps
    timesteps = torch.cat([torch.randint(0, steps, (1,), generator=g) for g in batch.rngs]).to(latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    hidden, pooled = examples.encode(batch.prompts)
    extra = None if pooled is None else {"text_embeds": pooled, "time_ids": batch.time_ids.to(pooled.dtype)}
    torch.manual_seed(cfg.seed * 1_000_003 + micro_step)  # LoRA dropout draws from the global generator
    pred = unet(noisy, timesteps, hidden, added_cond_kwargs=extra).sample
    target = training_target(noise_scheduler, latents, noise, timesteps)
    if cfg.with_prior_preservation and cfg.prior_mode == "base-prediction":
        target = torch.cat([target[: -batch.num_class], base_prediction(unet, examples, batch, noisy, timesteps)])
    weights = snr_weights(noise_scheduler, timesteps, cfg.snr_gamma)
    return dreambooth_loss(pred, target, batch.num_class, cfg.prior_loss_weight, weights)


def base_prediction(unet, examples: Examples, batch, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The frozen base model's output for the class half of the batch: what prior preservation keeps."""
    n = batch.num_class
    hidden, pooled = examples.base_encode(batch.prompts[-n:])
    extra = None if pooled is None else {"text_embeds": pooled, "time_ids": batch.time_ids[-n:].to(pooled.dtype)}
    base = unwrap(unet)  # no DistributedDataParallel hooks for a forward that never goes backward
    with torch.no_grad(), adapters_off(base):
        return base(noisy[-n:], timesteps[-n:], hidden, added_cond_kwargs=extra).sample


def unwrap(model):
    return getattr(model, "module", model)  # DistributedDataParallel keeps the model in .module


# ---------------------------------------------------------------- the run

def train(cfg: TrainConfig, on_event=None, stop_event=None) -> Path:
    """Train; return the output folder.

    `on_event(dict)` hears progress (for a UI): {"kind": "step", "step", "max_steps", "loss", "seconds"} after
    each step, {"kind": "validation", "step", "path"} for each validation grid, {"kind": "done", "path"} at the end.
    Setting `stop_event` (a threading.Event) stops after the current step with a checkpoint saved, and
    raises KeyboardInterrupt, as Ctrl-C does."""
    emit = on_event or (lambda event: None)
    check_train(cfg)
    check_paths(cfg)
    photos = load_folder(cfg.instance_dir, "--instance-dir")
    accelerator = make_accelerator(cfg)
    out = Path(cfg.output_dir).expanduser()
    pipe = load_pipeline(cfg.model, allow_pickle=cfg.allow_pickle)
    if cfg.vae:
        pipe.vae = load_vae(cfg.vae)
    info = describe(pipe)
    cfg = dataclasses.replace(cfg, resolution=cfg.resolution or info["native_resolution"], lora_alpha=float(cfg.lora_alpha or cfg.rank),
                              class_dir=cfg.class_dir or default_class_dir(cfg, info))
    main = accelerator.is_main_process  # with several processes only the first writes anything
    say = print if main else (lambda *a, **k: None)
    if main:
        check_identifier(pipe.tokenizer, cfg.instance_prompt, cfg.class_prompt)
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out / "config.yaml", to_yaml(cfg))
    say(f"{cfg.model}: {info['family']}, {info['prediction_type']} prediction; {len(photos)} photos at {cfg.resolution} px", flush=True)

    classes = []
    if cfg.with_prior_preservation and cfg.prior_mode == "generated":
        pipe.to(accelerator.device)
        ensure_class_images(pipe, cfg.class_prompt, cfg.class_dir, cfg.num_class_images, cfg.resolution, cfg.seed,
                            cfg.class_image_steps, cfg.sample_batch_size, cfg.guidance_scale, sampling_precision(accelerator),
                            shard=(accelerator.process_index, accelerator.num_processes), barrier=accelerator.wait_for_everyone)
        accelerator.wait_for_everyone()
        classes = load_folder(cfg.class_dir, "--class-dir")[: cfg.num_class_images]

    run = setup(cfg, pipe, accelerator)
    prepared, optimizer, lr_scheduler = run["models"], run["optimizer"], run["lr_scheduler"]
    models, unet = list(prepared.values()), prepared["unet"]
    named = {name: accelerator.unwrap_model(m) for name, m in prepared.items()}
    encoders = [prepared.get(name, m) for name, m in text_encoders(pipe).items()]
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if len(encoders) == 2 else [])
    examples = Examples(cfg, pipe.vae, tokenizers, encoders, accelerator.device, run["weight_dtype"], photos, classes,
                        accelerator.process_index, accelerator.num_processes)
    if accelerator.device.type == "cuda":
        # Everything the frozen VAE and text encoders will ever be asked during training, asked now;
        # then they leave the GPU (and come back only to draw validation images).
        examples.precompute()
        frozen = ([] if not cfg.center_crop else [pipe.vae]) + ([] if cfg.train_text_encoder else list(text_encoders(pipe).values()))
        offload = lambda: [m.to("cpu") for m in frozen]  # noqa: E731
        onload = lambda: [m.to(accelerator.device) for m in frozen]  # noqa: E731
        offload()
    else:
        offload = onload = lambda: None  # noqa: E731

    ckpt_dir = out / "checkpoints"
    checkpoint.remove_partial(ckpt_dir)
    step = 0
    if cfg.resume:
        found = checkpoint.newest(ckpt_dir)
        if found is None:
            warn(f"--resume: no checkpoint in {ckpt_dir}; starting from step 0")
        else:
            step = checkpoint.load(found, named, optimizer, lr_scheduler)
            say(f"resumed from {found.name} (step {step})", flush=True)

    trainable = [p for m in models for p in m.parameters() if p.requires_grad]  # listed once, not every step
    k = cfg.gradient_accumulation_steps
    started, loss_value, in_step = time.time(), None, False
    bar = tqdm(total=cfg.max_steps, initial=step, desc="training", unit="step", disable=not main)
    try:
        with stop_on_ctrl_c(stop_event) as stop, torch.autograd.set_detect_anomaly(cfg.detect_anomaly):
            while step < cfg.max_steps:
                in_step = True
                for micro in range(step * k, step * k + k):
                    with accelerator.accumulate(*models), accelerator.autocast():
                        loss, _, _ = step_loss(cfg, unet, run["noise_scheduler"], examples, micro)
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                            accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                lr_scheduler.step()
                step += 1
                in_step = False
                bar.update(1)
                checkpoint_now = cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.max_steps
                # Reading the loss waits for the device: do it every 10 steps, and before a checkpoint so none holds NaNs.
                if step % 10 == 0 or step == cfg.max_steps or checkpoint_now or stop.requested:
                    loss_value = finite_loss(loss, step)
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.2e}")
                if checkpoint_now and main:
                    checkpoint.save_or_stop(ckpt_dir, step, named, optimizer, lr_scheduler, cfg.checkpoints_total_limit)
                if main and cfg.validation_prompt and step % cfg.validation_steps == 0:
                    onload()
                    images = draw(pipe, cfg.validation_prompt, cfg.num_validation_images, cfg.seed, cfg.sample_steps,
                                  cfg.guidance_scale, cfg.resolution, cfg.sample_batch_size, autocast=accelerator.autocast)
                    offload()
                    atomic.save_image(report.grid(images), out / "validation" / f"step-{step:06d}.png")
                    emit({"kind": "validation", "step": step, "path": str(out / "validation" / f"step-{step:06d}.png")})
                if on_event:
                    emit({"kind": "step", "step": step, "max_steps": cfg.max_steps, "loss": loss_value,
                          "seconds": time.time() - started})
                if stop.requested:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        bar.close()
        if in_step:  # a second Ctrl-C, mid-step: the weights are between two steps, so save nothing
            say(f"\ninterrupted mid-step; the newest checkpoint in {ckpt_dir} is intact", flush=True)
        elif main:
            saved = checkpoint.save_or_stop(ckpt_dir, step, named, optimizer, lr_scheduler, cfg.checkpoints_total_limit)
            print(f"\ninterrupted at step {step}: saved {saved}; continue with --resume", flush=True)
        raise
    bar.close()
    seconds = time.time() - started
    if main:
        finish(cfg, pipe, info, out, step, named, optimizer, lr_scheduler, loss_value, seconds, accelerator, onload)
    accelerator.wait_for_everyone()
    emit({"kind": "done", "path": str(out)})
    return out


def finish(cfg: TrainConfig, pipe, info: dict, out: Path, step: int, named: dict, optimizer, lr_scheduler,
           loss_value, seconds: float, accelerator, onload) -> None:
    """The last checkpoint, the LoRA file (and its exports), samples and the model card."""
    checkpoint.save_or_stop(out / "checkpoints", step, named, optimizer, lr_scheduler, cfg.checkpoints_total_limit)
    meta = {"base_model": cfg.model, "family": info["family"], "prediction_type": info["prediction_type"],
            "instance_prompt": cfg.instance_prompt, "rank": cfg.rank, "alpha": cfg.lora_alpha, "steps": step,
            "resolution": cfg.resolution, "text_encoder": cfg.train_text_encoder}
    try:
        save_lora(out, type(pipe), named, meta)
    except OSError as e:
        raise TrainingError(f"could not write the LoRA to {out} ({e.strerror}); the checkpoint of step {step} is kept: "
                            f"free space and run again with --resume") from None
    onload()
    if cfg.export:
        from .export import export_with

        export_with(pipe, out / "pytorch_lora_weights.safetensors", cfg.export)
    if cfg.num_samples:
        images = draw(pipe, cfg.validation_prompt or cfg.instance_prompt, cfg.num_samples, cfg.seed, cfg.sample_steps,
                      cfg.guidance_scale, cfg.resolution, cfg.sample_batch_size, autocast=accelerator.autocast)
        atomic.save_image(report.grid(images), out / "samples.png")
    atomic.write_text(out / "README.md", report.model_card(cfg, info, loss_value, cfg.num_samples > 0, seconds))
    print(f"trained {cfg.max_steps} steps in {seconds:.1f} s; LoRA saved to {out}", flush=True)
