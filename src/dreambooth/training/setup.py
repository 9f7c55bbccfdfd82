"""Setting up a training run: check the settings, load the base model and photos, draw class images, add LoRA
adapters, build the optimiser, schedule and example stream (`set_up`, `prepare`), and find where to resume.
Returns a `Run`, everything the loop works with."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import atomic, autoencoder
from ..config import Precision, PriorMode, TrainConfig, check_train
from ..errors import UsageError, warn
from ..families import Family, text_encoders, tokenizers
from ..fields import to_dict, to_yaml
from ..lora.adapter import add_lora
from ..lora.files import WEIGHT_NAME
from ..lora.kohya import check_layout_names, export_in_force
from ..methods import Plan, plan_of
from ..methods.tokens import (
    NewTokens,
    TokenRows,
    add_rows,
    check_family,
    check_new,
    check_prompts,
    new_tokens,
    token_components,
    warn_uncaptioned,
)
from ..models import Base, describe, fingerprint, load_pipeline, load_vae, quantized_denoiser
from ..objectives import identity as objective_identity
from ..sampling import autocast_in, sampling_dtype
from . import checkpoint
from .batches import Examples
from .class_images import bank_dir, ensure_class_images, prompt_folder, read_class_prompts, shares
from .identifier import check_identifier, guess_identifier
from .identifier_prior import check_prior
from .photos import load_folder
from .subjects import Subject, class_groups, read_subjects, subject_photos
from .validation import read_prompts


@dataclass
class Run:
    """What the loop works with, made by `set_up`."""

    cfg: TrainConfig  # with the model's resolution, alpha, targets and class folder filled in
    pipe: Any
    base: Base
    accelerator: Any
    models: dict[str, torch.nn.Module]  # the trained components as accelerate prepared them
    named: dict[str, torch.nn.Module]  # the same, unwrapped: what checkpoints and the LoRA file hold
    optimizer: Any
    lr_scheduler: Any
    noise_scheduler: Any
    examples: Examples
    trainable: list[torch.nn.Parameter]  # listed once, not every step
    out: Path
    offload: Callable[[], object]  # frozen parts off the GPU while training ...
    onload: Callable[[], object]  # ... and back for drawing
    identity: dict  # what must match to continue this run from a checkpoint (see run_identity)
    ema: Any = None  # the moving average of the trained weights (--ema-decay), over `ema_params`
    validation: dict = field(default_factory=dict)  # what validation.py makes once: held examples, prompts, scorers
    plan: Plan = field(default_factory=lambda: Plan(lora=True))  # what the method trains, and when
    tokens: NewTokens | None = None  # --method textual-inversion / pivotal: the subjects' new tokens
    token_rows: dict[str, TokenRows] = field(default_factory=dict)  # their trained vectors, by text encoder

    def written(self, prompt: str, subject: int = 0) -> str:
        """`prompt` as the model reads it: the token abstraction replaced by the subject's new tokens."""
        return self.tokens.in_prompt(prompt, subject) if self.tokens else prompt

    @property
    def ema_params(self) -> list[torch.nn.Parameter]:
        return list(checkpoint.trainable(self.named).values())

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process  # with several processes only the first writes anything

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"


def holds_run(out: Path) -> str:
    """What of an earlier run `out` holds ("" when nothing): its checkpoints or its LoRA."""
    steps = sorted((out / "checkpoints").glob("step-*"))
    if steps:
        return f"the checkpoints of another run (up to {steps[-1].name})"
    return "another run's LoRA" if (out / WEIGHT_NAME).is_file() else ""


def check_paths(cfg: TrainConfig) -> None:
    out = Path(cfg.output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir {cfg.output_dir}: is a file; pass a folder path")
    if cfg.resume and cfg.overwrite:
        raise UsageError("--resume and --overwrite: choose one (continue the run in --output-dir, or start over)")
    found = holds_run(out) if out.is_dir() else ""
    if found and not (cfg.resume or cfg.overwrite):
        raise UsageError(
            f"--output-dir {cfg.output_dir}: holds {found}; pass --resume to continue it, or --overwrite to start over "
            f"(the old run is moved aside, not deleted)"
        )
    if cfg.class_dir and Path(cfg.class_dir).expanduser().is_file():
        raise UsageError(f"--class-dir {cfg.class_dir}: is a file; pass a folder path")


def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    if cfg.mixed_precision is Precision.FP16 and not torch.cuda.is_available():
        raise UsageError("--mixed-precision fp16: needs a CUDA GPU; use bf16 or no on this machine")
    # accelerate keeps its settings in process-wide singletons; a second run in the same process
    # (Python API, tests, a UI worker) may ask for another precision or accumulation.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    # cpu=True lets accelerate run several CPU processes (gloo) when launched with torchrun / accelerate launch
    return Accelerator(
        mixed_precision=cfg.mixed_precision.value,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        cpu=not torch.cuda.is_available(),
    )


def make_optimizer(cfg: TrainConfig, param_groups: list[dict], device: torch.device):
    """--optimizer over the parameter groups (each with its learning rate)."""
    if cfg.optimizer == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise UsageError("--optimizer prodigy: the prodigyopt package is not installed; pip install prodigyopt") from None
        # The authors' advice for diffusion LoRAs: safeguard_warmup keeps the step-size estimate from racing ahead
        # while the schedule's learning rate is still small (a warmup would otherwise inflate it), and Adam's bias
        # correction damps the first steps, when the moments are still mostly their zero start; decoupled weight
        # decay as AdamW applies it, with AdamW's setting.
        return Prodigy(
            param_groups,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_epsilon,
            weight_decay=cfg.adam_weight_decay,
            decouple=True,
            use_bias_correction=True,
            safeguard_warmup=True,
        )
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            warn("--optimizer adamw8bit: bitsandbytes is not installed (pip install bitsandbytes); using AdamW")
        else:
            return bnb.optim.AdamW8bit(
                param_groups, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon
            )
    # fused kernels on CUDA; elsewhere foreach (one op over all tensors) beats a Python loop over ~200 LoRA tensors
    cuda = device.type == "cuda"
    return torch.optim.AdamW(
        param_groups,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.adam_weight_decay,
        eps=cfg.adam_epsilon,
        fused=cuda,
        foreach=not cuda,
    )


def make_ema(cfg: TrainConfig, named: dict[str, torch.nn.Module]):
    """--ema-decay: diffusers' moving average of the trained LoRA weights (in checkpoint order), or None."""
    if not cfg.ema_decay:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(list(checkpoint.trainable(named).values()), decay=cfg.ema_decay, foreach=True)


MODEL_DECIDES = ("resolution", "lora_alpha", "target_modules", "text_encoder_target_modules", "export")  # when left empty


TARGET_PRESETS = ("attention", "attention-mlp", "all-linear")


def denoiser_targets(asked: list[str], family: Family) -> list[str]:
    """--target-modules: module names, or a preset: `attention` (the family's default), `attention-mlp` (with the
    feed-forward layers), `all-linear` (every linear layer, expanded when the adapters are added)."""
    if not asked or asked == ["attention"]:
        return list(family.denoiser_targets)
    if asked == ["attention-mlp"]:
        return list(family.denoiser_targets + family.mlp_targets)
    if any(name in TARGET_PRESETS for name in asked) and len(asked) > 1:
        raise UsageError(f"--target-modules {' '.join(asked)}: a preset ({', '.join(TARGET_PRESETS)}) stands alone")
    return list(asked)


def resolved(cfg: TrainConfig, base: Base, class_image_dtype: torch.dtype = torch.float32) -> TrainConfig:
    """The settings with what the model decides filled in: resolution, alpha, LoRA targets, the file for ComfyUI /
    A1111 / Forge (refused for a family without its layout), class-image folder (keyed by the precision class images
    are drawn in: `class_image_precision` of the run's device)."""
    family = base.family
    if cfg.train_text_encoder and set(family.text_encoders) <= set(family.frozen_text_encoders):
        raise UsageError(
            f"--train-text-encoder: {family.title} trains its {family.denoiser} alone (its text encoder is cached and "
            f"never trained, and diffusers loads no text-encoder LoRA for it); leave the flag off"
        )
    cfg = dataclasses.replace(
        cfg,
        resolution=cfg.resolution or base.native_resolution,
        lora_alpha=float(cfg.lora_alpha or cfg.rank),
        target_modules=denoiser_targets(cfg.target_modules, base.family),
        text_encoder_target_modules=cfg.text_encoder_target_modules or list(base.family.text_encoder_targets),
        export=export_in_force(cfg.export, base.family, cfg.dora, cfg.adapter),
    )
    prompts = class_prompts(cfg)
    if cfg.prior() is PriorMode.GENERATED and not cfg.class_dir and len(prompts) == 1:
        cfg = dataclasses.replace(cfg, class_dir=str(bank_for(cfg, prompts[0], class_image_dtype)))
    return cfg


def class_prompts(cfg: TrainConfig) -> list[str]:
    """The prompts class images are drawn from: --class-prompt and those of --class-prompts-file, or each subject's of
    --subjects (once each)."""
    if cfg.subjects:
        return list(dict.fromkeys(s.class_prompt for s in subjects_of(cfg) if s.class_prompt))
    return read_class_prompts(cfg.class_prompt, cfg.class_prompts_file)


def subjects_of(cfg: TrainConfig) -> list[Subject]:
    return read_subjects(cfg.subjects, cfg.with_prior_preservation, cfg.num_class_images) if cfg.subjects else []


def bank_for(cfg: TrainConfig, class_prompt: str, class_image_dtype: torch.dtype) -> Path:
    """The class-image bank's folder of one class prompt, for these settings."""
    # a quantized base draws other images than the full-precision one: its own bank
    precision = PRECISION_NAMES[class_image_dtype] + ("" if cfg.base_quantization == "none" else f"+{cfg.base_quantization}")
    return bank_dir(cfg.model, cfg.vae, class_prompt, cfg.resolution, cfg.class_image_steps, cfg.guidance_scale,
                    cfg.seed, precision)  # fmt: skip


def class_folders(cfg: TrainConfig, class_image_dtype: torch.dtype) -> list[tuple[str, Path, int]]:
    """(prompt, folder, number of images) for each class prompt: --num-class-images spread over the prompts. One
    prompt keeps --class-dir (or its bank folder, see `resolved`); several get a folder each, in --class-dir or the bank."""
    prompts = class_prompts(cfg)
    if cfg.subjects:  # one folder per class prompt, shared by the subjects of that class: the most any of them asks
        wanted = {p: max(s.num_class_images for s in subjects_of(cfg) if s.class_prompt == p) for p in prompts}
        if len(prompts) == 1 and cfg.class_dir:
            return [(prompts[0], Path(cfg.class_dir).expanduser(), wanted[prompts[0]])]
        return [(p, prompt_folder(cfg.class_dir, p) if cfg.class_dir else bank_for(cfg, p, class_image_dtype), wanted[p])
                for p in prompts]  # fmt: skip
    if len(prompts) == 1:
        return [(prompts[0], Path(cfg.class_dir).expanduser(), cfg.num_class_images)]
    folders = [prompt_folder(cfg.class_dir, p) if cfg.class_dir else bank_for(cfg, p, class_image_dtype) for p in prompts]
    return [(p, f, n) for p, f, n in zip(prompts, folders, shares(cfg.num_class_images, len(prompts))) if n]


PRECISION_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def class_image_precision(device: torch.device) -> torch.dtype:
    """What class images are drawn in on `device` (part of the bank's key): `sampling_dtype`."""
    return sampling_dtype(device)


def sampling_precision(accelerator):
    """The autocast class images are drawn under: in `class_image_precision`."""
    return autocast_in(accelerator.device, class_image_precision(accelerator.device))


def class_photos(cfg: TrainConfig, pipe, accelerator) -> list:
    """The class images of generated prior preservation, drawn first where missing (shared between processes)."""
    if cfg.prior() is not PriorMode.GENERATED:
        return []
    pipe.to(accelerator.device)
    wanted = class_folders(cfg, class_image_precision(accelerator.device))
    ensure_class_images(
        pipe,
        wanted,
        cfg.resolution,
        cfg.seed,
        cfg.class_image_steps,
        cfg.sample_batch_size,
        cfg.guidance_scale,
        sampling_precision(accelerator),
        shard=(accelerator.process_index, accelerator.num_processes),
        barrier=accelerator.wait_for_everyone,
    )
    accelerator.wait_for_everyone()
    photos = []
    for prompt, folder, count in wanted:
        # each image carries the prompt it was drawn from: the class half of a batch reads it
        photos += [dataclasses.replace(p, caption=prompt) for p in load_folder(folder, "--class-dir")[:count]]
    return photos


def adapt(cfg: TrainConfig, pipe, family: Family, device, weight_dtype, plan: Plan | None = None,
          tokens: NewTokens | None = None):  # fmt: skip
    """Freeze everything, move it to the device in the compute dtype (the VAE in fp32 where it must run so, see
    `autoencoder`), add what the method trains (`plan`): LoRA adapters, the new `tokens`' rows; returns the trained
    components by name, the optimiser's parameter groups and the new tokens' rows by encoder."""
    plan = plan or Plan(lora=True)
    denoiser = getattr(pipe, family.denoiser)
    encoders = text_encoders(pipe, family)
    for m in [denoiser, *encoders.values()]:
        m.requires_grad_(False)
        if getattr(m, "is_quantized", False):
            m.to(device)  # stored quantized, computing in the dtype it was quantized for
        else:
            m.to(device, dtype=weight_dtype)
    pipe.vae.requires_grad_(False)
    pipe.vae.to(device, dtype=autoencoder.weights_dtype(pipe.vae, weight_dtype))  # fp32 where its config asks
    rows = add_rows(pipe, family, tokens, cfg.initializer_word, cfg.seed, cfg.t5_tokens) if tokens else {}
    torch.manual_seed(cfg.seed)  # LoRA's initial weights
    trained = {family.denoiser: denoiser}
    groups = []
    if plan.lora:
        unread = family.unread_modules(family.denoiser, denoiser)
        params = add_lora(denoiser, cfg.rank, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules, unread, cfg.dora,
                          cfg.adapter, cfg.lokr_factor)  # fmt: skip
        groups.append({"params": params, "lr": cfg.learning_rate})
    if cfg.train_text_encoder:
        for name, encoder in encoders.items():
            if name in family.frozen_text_encoders:
                continue
            unread = family.unread_modules(name, encoder)
            targets = cfg.text_encoder_target_modules
            params = add_lora(encoder, cfg.rank, cfg.lora_alpha, cfg.lora_dropout, targets, unread, cfg.dora,
                              cfg.adapter, cfg.lokr_factor)  # fmt: skip
            groups.append({"params": params, "lr": cfg.text_encoder_lr})
            trained[name] = encoder
    for name, m in trained.items():
        m.train()
        if cfg.gradient_checkpointing:
            m.enable_gradient_checkpointing() if name == family.denoiser else m.gradient_checkpointing_enable()
    if rows:
        # encoders that carry new tokens alone stay in eval mode: no dropout (T5's), which would draw from the
        # global generator between steps and make a resumed run differ
        groups.append({"params": [r.weight for r in rows.values()], "lr": plan.token_lr})
        trained.update({name: getattr(pipe, name) for name in rows if name not in trained})
    return trained, groups, rows


def quantizes_on(device: torch.device) -> bool:
    """diffusers' bitsandbytes and torchao quantizers run on CUDA devices."""
    return device.type == "cuda"


def set_up(cfg: TrainConfig) -> Run:
    """Check the settings, load the photos and the base model, write the effective config, draw class images; then
    `prepare` the run."""
    check_train(cfg)
    plan = plan_of(cfg)  # the method's own checks
    check_paths(cfg)
    prompts = class_prompts(cfg)  # a bad --class-prompts-file fails here, before anything is loaded or written
    validation_prompts = read_prompts(cfg.validation_prompts) if cfg.validation_prompts else []  # and a bad prompt file
    subjects = subjects_of(cfg)  # and a bad --subjects file
    groups: list[list[int]] | None = None
    if subjects:
        photos, groups = subject_photos(subjects, cfg.masked_loss)
    else:
        photos = load_folder(cfg.instance_dir, "--instance-dir", masks=cfg.masked_loss)
    tokens = None
    if cfg.method.new_tokens:
        tokens, photos = with_new_tokens(cfg, subjects, photos, groups)
    accelerator = make_accelerator(cfg)
    pipe = load_pipeline(cfg.model, allow_pickle=cfg.allow_pickle)
    if cfg.vae:
        pipe.vae = load_vae(cfg.vae)
    base = describe(pipe, cfg.model)
    if tokens is not None:  # before anything is written
        check_family(base.family, cfg.t5_tokens, str(cfg.method))
        check_new(pipe, token_components(base.family, cfg.t5_tokens), tokens, cfg.model)
    if cfg.base_quantization != "none":
        if quantizes_on(accelerator.device):
            quantized_denoiser(pipe, base.family, cfg.base_quantization, cfg.mixed_precision.dtype, accelerator.device)
        else:
            if accelerator.is_main_process:
                print(
                    f"warning: --base-quantization {cfg.base_quantization} needs a CUDA GPU; training on the "
                    f"full-precision base on this {accelerator.device.type}",
                    flush=True,
                )
            cfg = dataclasses.replace(cfg, base_quantization="none")  # the effective setting, as config.yaml says
    cfg = resolved(cfg, base, class_image_precision(accelerator.device))
    if accelerator.is_main_process:
        out = Path(cfg.output_dir).expanduser()
        if cfg.overwrite and out.is_dir() and holds_run(out):
            print(f"--overwrite: the earlier run in {out} moved to {set_aside(out)}", flush=True)
        for prompt, class_prompt in (
            []
            if tokens
            else [(s.instance_prompt, s.class_prompt) for s in subjects] or [(cfg.instance_prompt, prompts[0] if prompts else "")]
        ):
            check_identifier(tokenizers(pipe, base.family)[0], prompt, class_prompt)
            check_prior(pipe, base.family, prompt, guess_identifier(prompt, class_prompt))
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out / "config.yaml", to_yaml(cfg))
        print(f"{cfg.model}: {base.summary()}; {len(photos)} photos at {cfg.resolution} px", flush=True)
        if cfg.optimizer == "prodigy":
            te = f", text encoder {cfg.text_encoder_lr}" if cfg.train_text_encoder else ""
            print(f"--optimizer prodigy: learning rate {cfg.learning_rate}{te} (1.0 unless given: Prodigy finds the "
                  f"step size, the learning rate scales it)", flush=True)  # fmt: skip
    classes = class_photos(cfg, pipe, accelerator)
    by_subject = None
    if groups is not None:
        by_subject = list(zip(groups, class_groups(subjects, classes)))
        if accelerator.is_main_process:
            each = "; ".join(f"{s.instance_prompt!r}: {len(g)} photos" for s, g in zip(subjects, groups))
            print(f"--subjects: {len(subjects)} subjects, taking turns in every batch ({each})", flush=True)
    run = prepare(cfg, pipe, base, photos, classes, accelerator, by_subject, plan, tokens)
    run.validation["prompts"] = [run.written(p) for p in validation_prompts]
    return run


def with_new_tokens(cfg: TrainConfig, subjects: list[Subject], photos: list, groups: list[list[int]] | None):
    """--method textual-inversion / pivotal: the subjects' new tokens, and the photos captioned with them in place of
    the token abstraction (each photo its own subject's). A prompt without the abstraction is refused."""
    abstraction = cfg.token_abstraction
    if subjects:
        check_prompts(abstraction, [(f"--subjects subject {n}: instance_prompt", s.instance_prompt)
                                    for n, s in enumerate(subjects, 1)])  # fmt: skip
    else:
        check_prompts(abstraction, [("--instance-prompt", cfg.instance_prompt)])
    tokens = new_tokens(abstraction, max(1, len(subjects)), cfg.tokens_per_subject)
    subject_of = {i: k for k, members in enumerate(groups or []) for i in members}
    own = [p.caption for p in photos if p.caption and p.caption not in {s.instance_prompt for s in subjects}]
    warn_uncaptioned(abstraction, own)
    photos = [
        dataclasses.replace(p, caption=tokens.in_prompt(p.caption or cfg.instance_prompt, subject_of.get(i, 0)))
        for i, p in enumerate(photos)
    ]
    return tokens, photos


def prepare(
    cfg: TrainConfig, pipe, base: Base, photos: list, classes: list, accelerator,
    subject_groups: list[tuple[list[int], list[int]]] | None = None, plan: Plan | None = None,
    tokens: NewTokens | None = None,
) -> Run:  # fmt: skip
    """Adapters on the loaded base, the optimiser and schedule, the example stream; on a GPU every embedding is
    computed up front and the frozen parts leave it. `cfg` is `resolved` for this base. `subject_groups`: with --subjects,
    each subject's (photo indices, class image indices)."""
    from diffusers.optimization import get_scheduler

    family = base.family
    if cfg.resolution % family.resolution_multiple:
        raise UsageError(f"--resolution {cfg.resolution}: {family.title} needs a multiple of {family.resolution_multiple}")
    for name in family.long_tokenizers:
        getattr(pipe, name).model_max_length = cfg.max_sequence_length
    identity = run_identity(cfg, base, pipe)  # before adapters: the base's own weights
    device, weight_dtype = accelerator.device, cfg.mixed_precision.dtype
    plan = plan or Plan(lora=True)
    trained, groups, rows = adapt(cfg, pipe, family, device, weight_dtype, plan, tokens)
    if cfg.export == "kohya" and family.denoiser in trained:
        check_layout_names(family, trained[family.denoiser])
    optimizer = make_optimizer(cfg, groups, device)
    lr_scheduler = get_scheduler(
        cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=cfg.max_steps
    )
    if device.type == "cuda":
        trained[family.denoiser].to(memory_format=torch.channels_last)  # cuDNN's fast convolution layout
    *prepared, optimizer = accelerator.prepare(*trained.values(), optimizer)
    models = dict(zip(trained, prepared))
    if cfg.compile:
        models[family.denoiser] = torch.compile(models[family.denoiser])
    encoders = [models.get(name, m) for name, m in text_encoders(pipe, family).items()]
    examples = Examples(
        cfg,
        family,
        pipe.vae,
        tokenizers(pipe, family),
        encoders,
        device,
        weight_dtype,
        photos,
        classes,
        accelerator.process_index,
        accelerator.num_processes,
        subject_groups,
        live_encoders(cfg, family, rows),
    )
    offload: Callable[[], object] = lambda: None  # noqa: E731
    onload: Callable[[], object] = lambda: None  # noqa: E731
    if device.type == "cuda":
        # Everything the frozen VAE and text encoders will ever be asked during training, asked now;
        # then they leave the GPU (and come back only to draw validation images).
        examples.precompute()
        frozen = ([pipe.vae] if cfg.center_crop else []) + [
            m for name, m in text_encoders(pipe, family).items() if name not in trained
        ]
        offload = lambda: [m.to("cpu") for m in frozen]  # noqa: E731
        onload = lambda: [m.to(device) for m in frozen]  # noqa: E731
        offload()
    named = {name: accelerator.unwrap_model(m, keep_torch_compile=False) for name, m in models.items()}
    return Run(
        cfg,
        pipe,
        base,
        accelerator,
        models,
        named,  # without the compile wrapper: saved names must be the module's own, not `_orig_mod.…`
        optimizer,
        lr_scheduler,
        family.objective.scheduler(pipe.scheduler.config),
        examples,
        [p for m in models.values() for p in m.parameters() if p.requires_grad],
        Path(cfg.output_dir).expanduser(),
        offload,
        onload,
        identity,
        make_ema(cfg, named),
        plan=plan,
        tokens=tokens,
        token_rows=rows,
    )


def live_encoders(cfg: TrainConfig, family: Family, rows: dict[str, TokenRows]) -> tuple[str, ...]:
    """The text encoders that run every step rather than from a cache of their embeddings: those with a LoRA
    (--train-text-encoder) and those carrying new tokens."""
    lora = [n for n in family.text_encoders if n not in family.frozen_text_encoders] if cfg.train_text_encoder else []
    return tuple(n for n in family.text_encoders if n in lora or n in rows)


def set_aside(out: Path) -> Path:
    """Move a folder out of the way in one rename, keeping it: OUT -> OUT.replaced-<time>."""
    aside = out.with_name(f"{out.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 2
    while aside.exists():
        aside, n = aside.with_name(f"{out.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{n}"), n + 1
    out.rename(aside)
    out.mkdir()
    return aside


def run_identity(cfg: TrainConfig, base: Base, pipe) -> dict:
    """What must match to continue a run from its checkpoints, by setting name; every other setting may change."""
    return {
        "base_quantization": cfg.base_quantization,  # before "model": a quantized base's weights differ too
        "model": fingerprint(pipe, base.family),  # the base's weights, wherever they were loaded from
        "family": base.family.name,
        # the same weights with another prediction type or noise schedule (a v-prediction copy of an epsilon base)
        "objective": objective_identity(base.family.objective, base.family.objective.scheduler(pipe.scheduler.config)),
        "adapter": cfg.adapter,
        "lokr_factor": cfg.lokr_factor,
        "dora": cfg.dora,
        "rank": cfg.rank,
        "lora_alpha": cfg.lora_alpha,
        "target_modules": cfg.target_modules,
        "train_text_encoder": cfg.train_text_encoder,
        "text_encoder_target_modules": cfg.text_encoder_target_modules if cfg.train_text_encoder else [],
        "optimizer": cfg.optimizer,
        "ema_decay": cfg.ema_decay,
        "method": str(cfg.method),
        "tokens_per_subject": cfg.tokens_per_subject if cfg.method.new_tokens else 0,
        "t5_tokens": cfg.t5_tokens,
    }


# where and how a run is started, and which extra files it writes: not what it trains
NOT_SETTINGS = ("output_dir", "resume", "overwrite", "export")


def run_settings(cfg: TrainConfig) -> dict:
    return {k: v for k, v in to_dict(cfg).items() if k not in NOT_SETTINGS}


def as_flag(key: str, value) -> str:
    """How to pass `value` for setting `key` on the command line."""
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else "--no-" + key.replace("_", "-")
    return f"{flag} {' '.join(value) if isinstance(value, list) else value}"


def objective_changes(now: str, then: str) -> str:
    """'prediction_type v_prediction (the run: epsilon)' for each setting of two objective identities that differs."""

    def settings(identity: str) -> dict[str, str]:
        return dict(part.split("=", 1) for part in identity.split(": ", 1)[-1].split("; ") if "=" in part)

    a, b = settings(now), settings(then)
    return ", ".join(f"{k} {a.get(k)} (the run: {b.get(k)})" for k in {**b, **a} if a.get(k) != b.get(k)) or (
        f"{now} (the run: {then})"
    )


def check_same_run(run: Run, found: Path) -> list[str]:
    """Refuse a checkpoint of another run (one line naming the setting, both values and the fix); return the settings
    that changed and may (for a warning)."""
    meta = checkpoint.read_meta(found)
    then = meta.get("identity") or {}
    for key, now in run.identity.items():
        if key in then and then[key] != now:
            if key == "objective":
                raise UsageError(
                    f"--resume: --model {run.cfg.model} trains toward another objective than the run in {run.out}: "
                    f"{objective_changes(now, str(then[key]))}; pass the model it was trained on to continue it, or "
                    f"--overwrite to start over"
                )
            if key == "model":
                raise UsageError(
                    f"--resume: --model {run.cfg.model} is not the base model the run in {run.out} was trained on (its "
                    f"weights differ); pass that model to continue it, or --overwrite to start over"
                )
            flag = "--" + key.replace("_", "-")
            raise UsageError(
                f"--resume: {flag} is {now!r} but the run in {run.out} was trained with {then[key]!r}; pass "
                f"{as_flag(key, then[key])} to continue it, or --overwrite to start over"
            )
    saved, current = meta.get("settings") or {}, run_settings(run.cfg)
    return [
        f"{k} {saved[k]!r} -> {current[k]!r}" for k in current if k in saved and saved[k] != current[k] and k not in run.identity
    ]


def resume(run: Run) -> int:
    """The step to start from: 0, or that of the newest intact checkpoint when --resume (weights, optimiser, schedule
    restored). A damaged newer one is named and passed over; one of another run is refused."""
    checkpoint.remove_partial(run.checkpoints)
    if not run.cfg.resume:
        return 0
    found, damaged = checkpoint.newest_intact(run.checkpoints)
    for path, why in damaged if run.main else []:
        warn(f"--resume: checkpoint {path.name} is damaged ({why}); passing over it")
    if found is None:
        if damaged:
            raise UsageError(
                f"--resume: no intact checkpoint in {run.checkpoints}; pass --overwrite to start over (the run is moved aside)"
            )
        if run.main:
            warn(f"--resume: no checkpoint in {run.checkpoints}; starting from step 0")
        return 0
    changed = check_same_run(run, found)
    step = checkpoint.load(found, run.named, run.optimizer, run.lr_scheduler, run.accelerator.scaler, run.ema)
    if run.main:
        if changed:
            warn(f"--resume: continuing {found.name} with changed settings: {'; '.join(changed)}")
        note = f"# resumed from checkpoints/{found.name} (step {step})" + (f"; changed: {'; '.join(changed)}" if changed else "")
        atomic.write_text(run.out / "config.yaml", to_yaml(run.cfg) + note + "\n")
        print(f"resumed from {found.name} (step {step})", flush=True)
    return step
