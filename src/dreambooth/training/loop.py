"""DreamBooth + LoRA training: set up -> loop -> finish, and with the step in between (setup.py builds the run, step.py
holds one step's loss).

Nothing random lives in process state: each example's photo, flip, crop, noise and timestep come from a
generator keyed by its position in the stream (batches.py), LoRA dropout from (seed, micro-step). So a run
resumed from a checkpoint continues exactly as an uninterrupted one would, and N data-parallel processes
train what one process with N times the batch would.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import atomic, threads
from ..config import TrainConfig
from ..errors import TrainingError, UsageError
from ..lora.files import KOHYA_NAME, WEIGHT_NAME, save_lora, which_file_where, write_comfyui_copy
from ..lora.kohya import LYCORIS_FUSED, has_kohya_layout
from ..methods.embeddings import save as save_embeddings
from ..methods.embeddings import trigger
from ..methods.tokens import vectors
from ..sampling import draw, grid
from . import checkpoint, progress, validation
from .card import comfyui_left_out, comfyui_words, model_card
from .loss import finite_loss
from .setup import Run, resume, run_settings, set_up, subjects_of
from .step import step_loss
from .stopping import stop_on_ctrl_c

Event = Callable[[dict], None]


# ---------------------------------------------------------------- one step


def optimizer_step(run: Run, step: int) -> torch.Tensor:
    """One optimiser step: the gradient-accumulation micro-batches forward and backward, clipped, applied.
    Returns the loss of the last micro-batch (not read back: that would wait for the device)."""
    cfg, accelerator = run.cfg, run.accelerator
    k = cfg.gradient_accumulation_steps
    denoiser = run.models[run.base.family.denoiser]
    learning = run.plan.tokens_train(step)  # the method's phase: do the new tokens train in this step?
    for rows in run.token_rows.values():
        rows.learning = learning
    for micro in range(step * k, step * k + k):
        with accelerator.accumulate(*run.models.values()), accelerator.autocast():
            loss, _, _ = step_loss(cfg, run.base.family, denoiser, run.noise_scheduler, run.examples, micro)
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                accelerator.clip_grad_norm_(run.trainable, cfg.max_grad_norm)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
    run.lr_scheduler.step()
    if run.ema is not None:
        run.ema.step(run.ema_params)
    return loss


# ---------------------------------------------------------------- the loop


def save_checkpoint(run: Run, step: int) -> Path:
    return checkpoint.save_or_stop(run.checkpoints, step, run.named, run.optimizer, run.lr_scheduler,
                                   run.cfg.checkpoints_total_limit, run.identity, run_settings(run.cfg),
                                   run.accelerator.scaler, run.ema)  # fmt: skip


def save_samples(run: Run, prompts: list[str], num: int, path: Path) -> None:
    """A grid of `num` images of each of `prompts` (a row each when several) drawn by the model as it is now, with
    the run's sampling settings."""
    cfg = run.cfg
    images = [image for prompt in prompts
              for image in draw(run.pipe, prompt, num, cfg.seed, cfg.sample_steps, cfg.guidance_scale, cfg.resolution,
                                cfg.sample_batch_size, autocast=run.accelerator.autocast)]  # fmt: skip
    atomic.save_image(grid(images, cols=num) if len(prompts) > 1 else grid(images), path)


def instance_prompts(cfg: TrainConfig) -> list[str]:
    """The prompt of the subject, or of each --subjects entry."""
    return [s.instance_prompt for s in subjects_of(cfg)] or [cfg.instance_prompt]


def written_prompts(run: Run) -> list[str]:
    """The instance prompts as the model reads them (with the new tokens of --method textual-inversion / pivotal)."""
    return [run.written(p, k) for k, p in enumerate(instance_prompts(run.cfg))]


def validate(run: Run, step: int, emit: Event | None) -> None:
    path = run.out / "validation" / f"step-{step:06d}.png"
    run.onload()
    save_samples(run, [run.written(run.cfg.validation_prompt)], run.cfg.num_validation_images, path)
    run.offload()
    if emit:
        emit({"kind": "validation", "step": step, "path": str(path)})


def validate_run(run: Run, step: int, emit: Event | None) -> None:
    """The validation loss and scores (validation.py), with the frozen parts on the device for them."""
    run.onload()
    made = validation.validate(run, step)
    run.offload()
    if emit and made:
        emit({"kind": "validation-scores", "step": step, **made})


def loop(run: Run, step: int, emit: Event | None, stop_event) -> tuple[int, float | None]:
    """Optimiser steps from `step` to max_steps, with checkpoints, validation and progress; returns the step reached
    and the last loss read.
    Ctrl-C (or `stop_event`) ends after the current step with a checkpoint saved, then raises KeyboardInterrupt."""
    cfg = run.cfg
    started, loss_value, in_step = time.time(), None, False
    bar = tqdm(total=cfg.max_steps, initial=step, desc="training", unit="step", disable=not run.main)
    if run.main and step == 0 and cfg.validation_loss:
        validate_run(run, 0, emit)  # the base model's loss: where the curve starts
    try:
        with stop_on_ctrl_c(stop_event) as stop, torch.autograd.set_detect_anomaly(cfg.detect_anomaly):
            while step < cfg.max_steps:
                in_step = True
                threads.refresh()  # another process, or another workload of this one (the page's scoring), may have started or ended
                loss = optimizer_step(run, step)
                step, in_step = step + 1, False
                bar.update(1)
                checkpoint_now = cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.max_steps
                # Reading the loss waits for the device: do it every 10 steps, and before a checkpoint so none holds NaNs.
                if step % 10 == 0 or step == cfg.max_steps or checkpoint_now or stop.requested:
                    loss_value = finite_loss(loss, step)
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{run.lr_scheduler.get_last_lr()[0]:.2e}")
                    if run.main:
                        progress.append(run.out, step, cfg.max_steps, loss_value, time.time() - started)
                if checkpoint_now and run.main:
                    save_checkpoint(run, step)
                if run.main and cfg.validation_prompt and step % cfg.validation_steps == 0:
                    validate(run, step, emit)
                if run.main and validation.wanted(cfg) and (step % cfg.validation_steps == 0 or step == cfg.max_steps):
                    validate_run(run, step, emit)
                if emit:
                    emit(
                        {
                            "kind": "step",
                            "step": step,
                            "max_steps": cfg.max_steps,
                            "loss": loss_value,
                            "seconds": time.time() - started,
                        }
                    )
                if stop.requested:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        bar.close()
        if in_step:  # a second Ctrl-C, mid-step: the weights are between two steps, so save nothing
            if run.main:
                print(f"\ninterrupted mid-step; the newest checkpoint in {run.checkpoints} is intact", flush=True)
        elif run.main:
            print(f"\ninterrupted at step {step}: saved {save_checkpoint(run, step)}; continue with --resume", flush=True)
        raise
    bar.close()
    return step, loss_value


# ---------------------------------------------------------------- finish


def finish(run: Run, step: int, loss_value: float | None, seconds: float) -> None:
    """The last checkpoint, what the method trained (the LoRA file and its exports, the new tokens' embeddings),
    samples and the model card."""
    cfg, base = run.cfg, run.base
    save_checkpoint(run, step)
    meta = {
        "base_model": cfg.model,
        "family": base.family.name,
        "version": base.version,
        "prediction_type": base.prediction_type,
        "instance_prompt": " | ".join(written_prompts(run)),
        "rank": cfg.rank,
        "alpha": cfg.lora_alpha,
        "steps": step,
        "resolution": cfg.resolution,
        "text_encoder": cfg.train_text_encoder,
        "dora": cfg.dora,
        "adapter": cfg.adapter,
        "ema": cfg.use_ema_weights,
        "method": str(cfg.method),
    }
    if cfg.use_ema_weights:
        # the LoRA file, its export and the samples are the moving average; the checkpoint above kept the last
        # weights, which a resumed run continues from
        run.ema.copy_to(run.ema_params)
    kept = validation.restore_best(run) if cfg.keep_best else None  # likewise the best-scoring step's weights
    if kept is not None:
        meta["kept_step"] = kept["step"]
        print(f"--keep-best {kept['metric']}: the LoRA is step {kept['step']} of {step} ({kept['metric']} "
              f"{kept['value']:.4f}, the best in validation/scores.csv)", flush=True)  # fmt: skip
    embeddings = write_embeddings(run, meta, step) if run.tokens else []
    written = write_lora(run, meta, step) if run.plan.lora else []
    run.onload()
    if cfg.num_samples:
        prompts = [run.written(cfg.validation_prompt)] if cfg.validation_prompt else written_prompts(run)
        save_samples(run, prompts, cfg.num_samples, run.out / "samples.png")
    atomic.write_text(run.out / "README.md", model_card(cfg, base, loss_value, cfg.num_samples > 0, seconds, kept, run.tokens))
    # The last line says which file goes where: most people load a LoRA in ComfyUI or A1111 / Forge, not diffusers.
    if written:
        where = f"LoRA saved to {run.out}: {which_file_where(written, cfg.adapter != 'lora')}"
    else:
        elsewhere = ", ComfyUI and A1111 / Forge" if base.family.embeddings_elsewhere else ""
        where = f"embeddings saved to {run.out}: {embeddings[0].name} for diffusers{elsewhere}"
    print(f"trained {cfg.max_steps} steps in {seconds:.1f} s; {where}{token_words(run)}", flush=True)


def token_words(run: Run) -> str:
    """What to write in a prompt for each subject, in each program (the last line's end)."""
    if not run.tokens:
        return ""
    n, elsewhere = len(run.tokens.per_subject), run.base.family.embeddings_elsewhere
    each = "; ".join(
        f"{run.tokens.written(k)} in diffusers and `dreambooth generate`"
        + (f", embedding:{trigger(run.out, k, n)} in ComfyUI, {trigger(run.out, k, n)} in A1111 / Forge" if elsewhere else "")
        for k in range(n)
    )
    return f"; write {each}"


def write_embeddings(run: Run, meta: dict, step: int) -> list[Path]:
    """--method textual-inversion / pivotal: the new tokens' vectors in `<name>_emb.safetensors`."""
    assert run.tokens is not None
    header = {f"dreambooth.{k}": str(v) for k, v in meta.items() if k in ("base_model", "family", "version", "steps", "method")}
    try:
        return save_embeddings(run.out, vectors(run.token_rows, run.base.family),
                               [list(t) for t in run.tokens.per_subject], header)  # fmt: skip
    except OSError as e:
        raise TrainingError(
            f"could not write the embeddings to {run.out} ({e.strerror}); the checkpoint of step {step} is kept: "
            f"free space and run again with --resume"
        ) from None


def write_lora(run: Run, meta: dict, step: int) -> list[str]:
    """The LoRA file and its exports; returns the names of the files written."""
    cfg, base = run.cfg, run.base
    adapted = {name: m for name, m in run.named.items() if getattr(m, "peft_config", None)}
    try:
        save_lora(run.out, type(run.pipe), adapted, meta)
    except OSError as e:
        raise TrainingError(
            f"could not write the LoRA to {run.out} ({e.strerror}); the checkpoint of step {step} is kept: "
            f"free space and run again with --resume"
        ) from None
    run.onload()
    if cfg.export == "kohya":
        from ..lora.export import export_with

        export_with(run.pipe, run.out / WEIGHT_NAME, cfg.export, model=cfg.model)
    elif base.family.comfyui_reads_diffusers_file and not has_kohya_layout(base.family):
        renames = {m: base.family.comfyui_unmapped[m] for m in comfyui_left_out(cfg, base)}
        if renames:
            write_comfyui_copy(run.out / WEIGHT_NAME, base.family.denoiser, renames)
        print(f"note: {comfyui_words(cfg, base)} (it reads diffusers' names for {base.family.title})", flush=True)
    elif not has_kohya_layout(base.family):
        print(
            f"note: no file in the kohya layout (A1111 / Forge, sd-scripts): this tool does not write {base.family.title} LoRAs in it yet",
            flush=True,
        )
    elif cfg.dora:
        print("note: no file for ComfyUI / A1111 / Forge: this tool writes DoRA LoRAs for diffusers only", flush=True)
    elif cfg.adapter != "lora":
        print(f"note: no file for ComfyUI / A1111 / Forge: {LYCORIS_FUSED.format(adapter=cfg.adapter, family=base.family.title)}",
              flush=True)  # fmt: skip
    return [WEIGHT_NAME, *([KOHYA_NAME] if cfg.export == "kohya" else [])]


def release(run: Run) -> None:
    """Let the run's models go as soon as the run does. accelerate gives each model it prepares for mixed precision
    an autocast-wrapped `forward` stored on the model itself, a reference cycle: without this, their memory (a GPU's
    too) would wait for the garbage collector, and a second run in the same process (the page, the Python API)
    would start with the first one's models still loaded."""
    for model in [*run.models.values(), *run.named.values()]:
        for patched in ("forward", "_original_forward"):
            model.__dict__.pop(patched, None)
    # What accelerate's free_memory() clears, without the full garbage collection it adds (0.3 s a run on a CPU
    # process that has loaded the libraries): with the cycle above broken, dropping the lists frees the models.
    for held in ("_models", "_optimizers", "_schedulers", "_dataloaders"):
        getattr(run.accelerator, held).clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train(cfg: TrainConfig, on_event: Event | None = None, stop_event=None, score=None) -> Path:
    """Train; return the output folder.

    `on_event(dict)` hears progress (for a UI): {"kind": "step", "step", "max_steps", "loss", "seconds"} after
    each step, {"kind": "validation", "step", "path"} for each validation grid, {"kind": "validation-scores", "step",
    "loss", "scores"} for each validation loss and scores (either may be absent), {"kind": "done", "path"} at the end.
    Setting `stop_event` (a threading.Event) stops after the current step with a checkpoint saved, and
    raises KeyboardInterrupt, as Ctrl-C does.

    `score` scores the samples of --validation-prompts (evaluation.validation_scores.validation_scorer builds the
    tool's own; dreambooth.train hands it in).

    Torch's CPU threads are the free cores (threads.py) unless `cfg.threads` says; config.yaml records the count."""
    with threads.workload(cfg.threads) as count:
        return train_with(dataclasses.replace(cfg, threads=count), on_event, stop_event, score)


def train_with(cfg: TrainConfig, on_event: Event | None, stop_event, score=None) -> Path:
    if cfg.validation_prompts and score is None:  # before anything is set up, not at the first validation
        raise UsageError("--validation-prompts: this training was given no scorer; start it with dreambooth.train")
    run = set_up(cfg)
    run.validation["score"] = score
    try:
        first = resume(run)
        if run.main and first == 0:
            validation.forget(run.out)  # a run started afresh keeps no step of one that ended before its first checkpoint
        started = time.time()
        step, loss_value = loop(run, first, on_event, stop_event)
        if run.main:
            finish(run, step, loss_value, time.time() - started)
        run.accelerator.wait_for_everyone()
    finally:
        release(run)
    if on_event:
        on_event({"kind": "done", "path": str(run.out)})
    return run.out
