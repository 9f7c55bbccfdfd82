"""One typed dataclass per command, and the checks of its values. CLI flags, YAML files and the Python API all fill
these (fields.py says how).

Every field documents itself (`help`) and may name aliases: the flag names of diffusers'
`train_dreambooth_lora.py` and of the LoRA notebook script this tool replaces. The CLI parser
and the YAML reader are both generated from these fields, so there is one table of names.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

from . import threads
from .errors import UsageError
from .fields import check_each, flag_name, opt
from .models import embedded_help


class PriorMode(str, enum.Enum):
    """Where prior preservation's class targets come from."""

    GENERATED = "generated"  # class images drawn by the base model (the paper)
    BASE_PREDICTION = "base-prediction"  # the frozen base model's prediction on the photos' own noised latents

    def __str__(self) -> str:  # in messages and the model card, the value the flag takes
        return self.value


class Method(str, enum.Enum):
    """How the subject is bound to the prompt (methods/ says what trains, and when)."""

    DREAMBOOTH = "dreambooth"  # LoRA on the denoiser (and the text encoders with --train-text-encoder)
    TEXTUAL_INVERSION = "textual-inversion"  # new token embeddings alone (Gal et al. 2022)
    PIVOTAL = "pivotal"  # new token embeddings for the first --ti-fraction of the steps, the LoRA throughout

    def __str__(self) -> str:
        return self.value

    @property
    def new_tokens(self) -> bool:
        return self is not Method.DREAMBOOTH


class Precision(str, enum.Enum):
    NO = "no"
    FP16 = "fp16"
    BF16 = "bf16"

    def __str__(self) -> str:
        return self.value

    @property
    def dtype(self):
        import torch

        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.value, torch.float32)


OPTIMIZERS = ("adamw", "adamw8bit", "prodigy")
ADAPTERS = ("lora", "lokr", "loha")
PRODIGY_LR = 1.0


def check_threads(cfg) -> None:
    check_each(cfg, ["threads"], lambda v: v >= 0, threads.RULE)


@dataclass
class TrainConfig:
    COMMAND: ClassVar[str] = "train"

    model: str = opt(
        "tiny",
        "base model: hub id, local diffusers folder, single-file .safetensors, or an embedded one: "
        f"{embedded_help()}; an embedded model's recommended settings are the defaults for it",
        ("pretrained_model_name_or_path",),
    )
    vae: str = opt(
        "", "another VAE to use (hub id or folder), e.g. an fp16-safe SDXL VAE", ("pretrained_vae_model_name_or_path",)
    )
    instance_dir: str = opt(
        "", "folder of the subject's photos (3-10); a .txt beside an image is its caption", ("instance_data_dir",)
    )
    instance_prompt: str = opt("", "prompt with the identifier and class noun, e.g. 'a photo of sks dog'")
    subjects: str = opt(
        "",
        "YAML list of several subjects to train into one LoRA, each with instance_dir, instance_prompt (its own "
        "identifier), class_prompt and num_class_images; replaces --instance-dir / --instance-prompt / --class-prompt",
    )
    output_dir: str = opt("", "folder for the LoRA weights, config, model card and checkpoints")
    resolution: int = opt(0, "training resolution in pixels (multiple of 8); 0 = the model's native size")
    center_crop: bool = opt(True, "centre-crop after resizing (--no-center-crop: random crop)")
    random_flip: bool = opt(False, "flip images horizontally at random")
    bucketing: bool = opt(
        False,
        "aspect-ratio buckets: each photo keeps its shape, resized to the bucket of about the model's area (sides "
        "multiples of 64 px) nearest its aspect; a batch is drawn from one bucket, class images cropped to it",
    )
    caption_dropout: float = opt(
        0.0,
        "fraction of instance examples trained with an empty prompt (0-1): the photos' look is then learned apart "
        "from the identifier, and classifier-free guidance keeps its unconditional side",
    )
    class_caption_dropout: float = opt(
        0.0,
        "with prior preservation: fraction of class examples trained with an empty prompt (0-1), so classifier-free "
        "guidance's unconditional side stays the class and does not drift toward the subject",
    )
    preserve_unconditional: bool = opt(
        False,
        "--class-caption-dropout: the class examples trained with an empty prompt aim at the frozen base model's own "
        "prediction instead of the image's noise, so guidance's unconditional side stays the base's exactly",
    )
    masked_loss: bool = opt(
        False,
        "weigh the photos' loss by a mask (name.mask.png beside name.jpg, white = subject, or the photo's alpha "
        "channel) so the LoRA learns the subject, not its background; photos without one count as all subject",
    )
    mask_background_weight: float = opt(
        0.0, "--masked-loss: weight of the background's loss (0 = learn the subject only, 1 = as without masks)"
    )
    with_prior_preservation: bool = opt(False, "add the class-specific prior-preservation loss")
    class_prompt: str = opt("", "prompt for the class prior, e.g. 'a photo of a dog'")
    class_prompts_file: str = opt(
        "",
        "text file of more class prompts, one a line (e.g. 'a photo of a dog on the beach'): --num-class-images are "
        "drawn across --class-prompt and these, so the class half of each batch keeps its contexts too",
    )
    class_dir: str = opt(
        "",
        "folder of class images; missing ones are generated (default: a shared class-image bank in "
        "the user cache, keyed by model, prompt, resolution, sampler and seed)",
        ("class_data_dir",),
    )
    num_class_images: int = opt(100, "number of class images to use (generated when missing)")
    prior_loss_weight: float = opt(1.0, "lambda: weight of the class loss")
    prior_mode: PriorMode = opt(
        PriorMode.GENERATED,
        "class targets: 'generated' class images (the paper), or 'base-prediction': the frozen "
        "base model's own prediction for the class prompt on the photos' noised latents "
        "(no class images needed)",
    )
    class_image_steps: int = opt(25, "sampling steps when generating class images")
    sample_batch_size: int = opt(4, "batch size when generating class images and samples")
    method: Method = opt(
        Method.DREAMBOOTH,
        "how the subject is bound to the prompt: dreambooth (a LoRA); textual-inversion (only new token embeddings "
        "train: --token-abstraction in the prompts becomes the subject's new tokens; no LoRA); pivotal (the new "
        "tokens train for the first --ti-fraction of the steps, the LoRA throughout)",
        switches={"train_text_encoder_ti": "pivotal"},
    )
    token_abstraction: str = opt(
        "TOK",
        "--method textual-inversion / pivotal: the word in the instance prompt and captions that becomes the "
        "subject's new tokens (<s0><s1>; with --subjects each subject's own)",
    )
    tokens_per_subject: int = opt(
        2, "--method textual-inversion / pivotal: new tokens per subject", ("num_new_tokens_per_abstraction",)
    )
    initializer_word: str = opt(
        "",
        "--method textual-inversion / pivotal: the new tokens start as this word's embedding (e.g. the class noun); "
        "empty: random, at the scale of the embedding table's own rows",
    )
    ti_fraction: float = opt(
        0.5,
        "--method pivotal: the share of the steps the new tokens train (then they stay fixed while the LoRA trains on)",
        ("train_text_encoder_ti_frac",),
    )
    t5_tokens: bool = opt(
        False, "--method textual-inversion / pivotal on FLUX.1 / SD3: new tokens in T5 too (it then runs every step)"
    )
    rank: int = opt(16, "LoRA rank", ("lora_rank",))
    lora_alpha: float = opt(0.0, "LoRA alpha; 0 = same as rank")
    lora_dropout: float = opt(0.0, "LoRA dropout")
    dora: bool = opt(
        False,
        "DoRA (weight-decomposed LoRA, peft's use_dora): also learns each adapted layer's weight magnitude; closer to "
        "full fine-tuning at low rank, slower per step (twice as long on the world model's CPU run)",
        ("use_dora",),
    )
    adapter: str = opt(
        "lora",
        "adapter kind: lora; lokr (LyCORIS LoKr: each update a Kronecker product of two small factors, peft's LoKr); "
        "loha (LyCORIS LoHa: the elementwise product of two low-rank products, peft's LoHa)",
        choices=ADAPTERS,
    )
    lokr_factor: int = opt(
        -1,
        "--adapter lokr: the Kronecker factor's size (the first factor is factor x factor per layer, when it divides "
        "the layer's sizes); -1 = as square as the layer allows",
    )
    target_modules: list[str] = opt(
        [],
        "denoiser modules that get LoRA adapters, or a preset: attention (the default: the family's attention "
        "projections), attention-mlp (and the feed-forward layers), all-linear",
    )
    train_text_encoder: bool = opt(False, "also train a LoRA on the text encoder")
    text_encoder_lr: float = opt(
        1e-4,
        "learning rate of the text-encoder LoRA, and of the new tokens with --method pivotal",
        ("learning_rate_text",),
    )
    text_encoder_target_modules: list[str] = opt(
        [], "text-encoder modules that get LoRA adapters; default: the family's (CLIP: q_proj k_proj v_proj out_proj)"
    )
    learning_rate: float = opt(5e-4, "learning rate of the denoiser's LoRA (of the new tokens with --method textual-inversion)")
    lr_scheduler: str = opt(
        "constant",
        "learning-rate schedule",
        choices=("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"),
    )
    lr_warmup_steps: int = opt(0, "warmup steps of the schedule")
    max_steps: int = opt(300, "optimiser steps to train", ("max_train_steps",))
    batch_size: int = opt(1, "instance images per step (as many class images join them)", ("train_batch_size",))
    gradient_accumulation_steps: int = opt(1, "micro-batches per optimiser step")
    gradient_checkpointing: bool = opt(False, "trade compute for memory in the UNet (and text encoder)")
    compile: bool = opt(False, "torch.compile the UNet (slow first steps, faster after; mostly worth it on a GPU)")
    mixed_precision: Precision = opt(Precision.NO, "autocast precision (fp16 needs a GPU)")
    base_quantization: str = opt(
        "none",
        "store the frozen denoiser quantized (bitsandbytes nf4 or int8, torchao fp8) to fit smaller cards; the LoRA "
        "trains in the compute precision. CUDA only: elsewhere a warning and the full-precision base",
        choices=("none", "nf4", "int8", "fp8"),
    )
    optimizer: str = opt(
        "adamw",
        "adamw; adamw8bit (bitsandbytes' 8-bit AdamW, less memory; AdamW when it is not installed); prodigy (finds its "
        "own step size: learning rates 1.0 unless given)",
        choices=OPTIMIZERS,
        switches={"use_8bit_adam": "adamw8bit"},
    )
    adam_beta1: float = opt(0.9, "AdamW beta1")
    adam_beta2: float = opt(0.999, "AdamW beta2")
    adam_weight_decay: float = opt(1e-2, "AdamW weight decay")
    adam_epsilon: float = opt(1e-8, "AdamW epsilon")
    snr_gamma: float = opt(
        0.0, "min-SNR-gamma loss weights (Hang et al. 2023); 0 = plain MSE, 5 is usual; use what the base was trained with"
    )
    weighting_scheme: str = opt(
        "none",
        "flow-matching families (FLUX.1, SD3): how noise levels are drawn or weighted (SD3 paper): logit_normal, mode, "
        "cosmap, sigma_sqrt, or none (uniform)",
        choices=("logit_normal", "mode", "cosmap", "sigma_sqrt", "none"),
    )
    logit_mean: float = opt(0.0, "mean of the logit-normal noise-level density (--weighting-scheme logit_normal)")
    logit_std: float = opt(1.0, "standard deviation of the logit-normal noise-level density")
    mode_scale: float = opt(1.29, "scale of the mode density (--weighting-scheme mode)")
    max_sequence_length: int = opt(
        512,
        "prompt tokens of T5 (FLUX.1, SD3; shorter is faster, 77 often enough for one subject) or Qwen3 (FLUX.2 "
        "[klein]: its transformer reads the padding too, so train at the length you draw at; Z-Image: padding is "
        "dropped, so only a longer prompt is cut)",
    )
    training_guidance: float = opt(
        1.0,
        "FLUX.1 [dev]: the guidance value the transformer is given while training (diffusers' script: 3.5; sd-scripts: "
        "1.0, which keeps the LoRA from learning the subject at one guidance strength)",
    )
    max_grad_norm: float = opt(1.0, "gradient clipping norm; 0 = off")
    ema_decay: float = opt(
        0.0,
        "keep an exponential moving average of the LoRA weights with this decay (e.g. 0.999; warmed up as diffusers' "
        "EMAModel does); 0 = none",
    )
    use_ema_weights: bool = opt(False, "save the moving average (--ema-decay) as the LoRA instead of the last weights")
    seed: int = opt(0, "seed for class images, noise, timesteps and crops")
    threads: int = opt(
        0,
        "CPU threads for torch; 0 = chosen: OMP_NUM_THREADS when set, else the cores other processes leave free, "
        "taken again between steps (so a second run on the machine does not slow both many times over)",
    )
    checkpoint_every: int = opt(0, "save a resumable checkpoint every N steps; 0 = only at the end", ("checkpointing_steps",))
    checkpoints_total_limit: int = opt(2, "checkpoints kept (oldest removed first)")
    resume: bool = opt(False, "continue from the newest intact checkpoint in OUTPUT_DIR/checkpoints")
    overwrite: bool = opt(
        False, "start over in an OUTPUT_DIR that holds another run (it is moved aside, to OUTPUT_DIR.replaced-<time>)"
    )
    validation_prompt: str = opt("", "prompt for validation images during training (default: none)")
    validation_steps: int = opt(100, "validate every N steps (images, --validation-loss, --validation-prompts)")
    num_validation_images: int = opt(4, "validation images each time (of each prompt of --validation-prompts)")
    validation_loss: bool = opt(
        False,
        "a loss on the photos and class images with fixed noise and timesteps, every --validation-steps: "
        "validation/loss.csv and loss.png",
    )
    validation_prompts: str = opt(
        "",
        "text file of prompts, one a line (e.g. the subject in the contexts you want): every --validation-steps each "
        "is drawn and the samples scored (the world's reader on --model world, DINO / CLIP with --dino-model / "
        "--clip-model) into validation/scores.csv and scores.png",
    )
    dino_model: str = opt("", "--validation-prompts: score samples by DINO against the photos (hub id or local folder)")
    clip_model: str = opt("", "--validation-prompts: score samples by CLIP-I and CLIP-T (hub id or local folder)")
    keep_best: str = opt(
        "",
        "make the validation step with the best score of this metric the run's LoRA (subject_in_context, "
        "subject_fidelity, ... on the world; dino, clip_i, clip_t): needs --validation-prompts",
    )
    num_samples: int = opt(4, "sample images for the model card at the end; 0 = none")
    sample_steps: int = opt(25, "sampling steps for validation and model-card samples")
    guidance_scale: float = opt(7.5, "classifier-free guidance for class images and samples")
    allow_pickle: bool = opt(False, "read a .ckpt/.pt/.bin base model (with torch.load(weights_only=True)); only files you trust")
    detect_anomaly: bool = opt(False, "trace the operation that made a NaN/inf (slow; for debugging)")
    export: str = opt(
        "",
        "the LoRA file for ComfyUI, A1111 / Forge and sd-scripts, written beside the diffusers one: kohya "
        "(lora_kohya.safetensors) or none; default: kohya wherever this tool writes the family's kohya layout",
        choices=("", "kohya", "none"),
    )

    def __post_init__(self):
        # modes given as plain strings (the Python API) become their types; the CLI and YAML checked them already
        self.prior_mode = PriorMode(self.prior_mode)
        self.method = Method(self.method)
        self.mixed_precision = Precision(self.mixed_precision)

    @staticmethod
    def implied(values: dict) -> dict:
        """Settings that follow from `values` unless they give them too: with Prodigy the learning rates are 1.0 (its
        authors' advice: it estimates the step size, the learning rate only scales it)."""
        implied: dict = {}
        if str(values.get("optimizer", "")) == "prodigy":
            implied |= {"learning_rate": PRODIGY_LR, "text_encoder_lr": PRODIGY_LR}
        if str(values.get("method", "")) == Method.TEXTUAL_INVERSION.value:
            implied |= {"train_text_encoder": False}  # no LoRA anywhere, whatever the model recommends
        return implied

    def prior(self) -> PriorMode | None:
        """The prior-preservation mode in force, None without prior preservation: the one place the two flags meet."""
        return self.prior_mode if self.with_prior_preservation else None


@dataclass
class GenerateConfig:
    COMMAND: ClassVar[str] = "generate"

    model: str = opt(
        "",
        "base model: hub id, local diffusers folder, single-file .safetensors, or an embedded one ('tiny', ...); "
        "default: the one the LoRA was trained on (its config.yaml), else 'tiny'",
        ("pretrained_model_name_or_path",),
    )
    vae: str = opt("", "another VAE to use (hub id or folder); default: the LoRA's training VAE, else the model's own")
    lora: str = opt("", "trained output folder or .safetensors file; empty = the base model alone")
    prompt: str = opt("", "what to draw, e.g. 'a photo of sks dog on the grass'")
    negative_prompt: str = opt("", "what to steer away from")
    num_images: int = opt(4, "images to make", ("num_images_per_prompt",))
    steps: int = opt(30, "sampling steps", ("num_inference_steps",))
    guidance: float = opt(7.5, "classifier-free guidance scale", ("guidance_scale",))
    seed: int = opt(0, "image i uses seed + i")
    threads: int = opt(
        0,
        "CPU threads for torch; 0 = chosen: OMP_NUM_THREADS when set, else the cores other processes leave free, "
        "taken again between steps (so a second run on the machine does not slow both many times over)",
    )
    unet_scale: float = opt(1.0, "strength of the UNet LoRA")
    text_encoder_scale: float = opt(1.0, "strength of the text-encoder LoRA")
    resolution: int = opt(0, "image size in pixels (multiple of 8); 0 = the model's native size")
    batch_size: int = opt(4, "images per pipeline call")
    output_dir: str = opt("", "folder for the PNGs, grid.png and config.yaml")
    allow_pickle: bool = opt(
        False, "read .ckpt/.pt/.bin model or LoRA files (with torch.load(weights_only=True)); only files you trust"
    )


@dataclass
class IdentifierConfig:
    model: str = opt("tiny", "model whose tokenizer to read (hub id, folder, or 'tiny')", ("pretrained_model_name_or_path",))
    prompt: str = opt("", "show how this prompt tokenises")
    count: int = opt(20, "candidates to list")
    max_chars: int = opt(3, "longest candidate in characters")
    min_id: int = opt(35000, "rarest part of the vocabulary to draw from (BPE ids grow as merges get rarer)")
    seed: int = opt(0, "seed for drawing candidates")
    measure: bool = opt(
        False,
        "rank the candidates by the base model's measured prior for them: how far its text encoders move 'a photo of "
        "X <class>' from 'a photo of a <class>' (and on the world model, how it draws them); the weakest of three "
        "times --count candidates are listed, beside --compare",
    )
    class_noun: str = opt("dog", "with --measure: the class noun of the prompts measured")
    compare: list[str] = opt(
        ["dog", "red", "jpg", "mvc", "esg"], "with --measure: words with a prior to measure beside the rare candidates"
    )
    samples: int = opt(8, "with --measure on the world model: samples drawn per word (0: the text measure alone)")


@dataclass
class ExportConfig:
    lora: str = opt("", "a `dreambooth train` folder or LoRA file (also cloneofsimo/lora's lora_weight.safetensors / .pt)")
    format: str = opt(
        "kohya", "layout to write: kohya (ComfyUI, A1111 / Forge, sd-scripts) or diffusers", choices=("kohya", "diffusers")
    )
    output: str = opt("", "file to write; default: lora_kohya.safetensors or pytorch_lora_weights.safetensors beside the input")
    model: str = opt(
        "",
        "base model the LoRA is for; default: the one in its config.yaml or header, else 'tiny'",
        ("pretrained_model_name_or_path",),
    )
    allow_pickle: bool = opt(False, "read .pt/.bin LoRA files (with torch.load(weights_only=True)); only files you trust")


def check_export(cfg: ExportConfig) -> None:
    if not cfg.lora:
        raise UsageError("--lora is required: pass a `dreambooth train` folder or a LoRA file")


def check_train(cfg: TrainConfig) -> None:
    """Value checks that need no file or model: run before anything is loaded."""
    need = [
        ("instance_dir", "the folder of the subject's photos"),
        ("instance_prompt", "e.g. 'a photo of sks dog'"),
        ("output_dir", "a folder for the results"),
    ]
    if cfg.subjects:
        given = [name for name in ("instance_dir", "instance_prompt", "class_prompt", "class_prompts_file") if getattr(cfg, name)]
        if given:
            raise UsageError(
                f"--subjects: replaces {flag_name(given[0])} (each subject names its own); drop {flag_name(given[0])}"
            )
        if cfg.prior() is PriorMode.BASE_PREDICTION:
            raise UsageError("--subjects: with --prior-mode base-prediction is not supported; use --prior-mode generated")
        if cfg.bucketing:
            raise UsageError(
                "--subjects: with --bucketing is not supported yet (the subjects take turns in square batches); drop --bucketing"
            )
        need = need[2:]
    for name, what in need:
        if not getattr(cfg, name):
            raise UsageError(f"{flag_name(name)} is required: pass {what}")
    if cfg.resolution < 0 or cfg.resolution % 8:
        raise UsageError(f"--resolution {cfg.resolution}: must be a positive multiple of 8 (or 0 for the model's size)")
    if cfg.with_prior_preservation and not (cfg.class_prompt or cfg.class_prompts_file or cfg.subjects):
        raise UsageError("--with-prior-preservation needs --class-prompt, e.g. --class-prompt 'a photo of a dog'")
    if cfg.class_prompts_file and cfg.prior() is PriorMode.BASE_PREDICTION:
        raise UsageError(
            "--class-prompts-file: class prompts are drawn as class images, which --prior-mode base-prediction does "
            "not use; drop the file or use --prior-mode generated"
        )
    check_each(
        cfg,
        [
            "rank",
            "max_steps",
            "batch_size",
            "gradient_accumulation_steps",
            "num_class_images",
            "class_image_steps",
            "sample_batch_size",
            "sample_steps",
            "validation_steps",
        ],
        lambda v: v >= 1,
        "must be at least 1",
    )
    check_each(
        cfg,
        [
            "lora_alpha",
            "lora_dropout",
            "prior_loss_weight",
            "snr_gamma",
            "lr_warmup_steps",
            "max_grad_norm",
            "checkpoint_every",
            "num_samples",
            "num_validation_images",
            "adam_weight_decay",
            "checkpoints_total_limit",
        ],
        lambda v: v >= 0,
        "must not be negative",
    )
    check_each(cfg, ["lora_dropout"], lambda v: v < 1, "must be below 1")
    check_each(cfg, ["caption_dropout", "class_caption_dropout"], lambda v: 0 <= v <= 1, "must be between 0 and 1, e.g. 0.1")
    if cfg.preserve_unconditional and not (cfg.class_caption_dropout > 0 and cfg.prior() is PriorMode.GENERATED):
        raise UsageError(
            "--preserve-unconditional: acts on the class examples --class-caption-dropout empties; add "
            "--class-caption-dropout 0.2 with --with-prior-preservation (class images), or drop it"
        )
    check_each(cfg, ["mask_background_weight"], lambda v: 0 <= v <= 1, "must be between 0 and 1, e.g. 0 or 0.1")
    check_each(cfg, ["max_sequence_length"], lambda v: v >= 1, "must be at least 1")
    check_each(cfg, ["logit_std"], lambda v: v > 0, "must be positive")
    check_optimizer(cfg)
    check_each(cfg, ["ema_decay"], lambda v: 0 <= v < 1, "must be between 0 and 1 (0 = no moving average), e.g. 0.999")
    check_adapter(cfg)
    if cfg.use_ema_weights and not cfg.ema_decay:
        raise UsageError("--use-ema-weights needs --ema-decay, e.g. --ema-decay 0.999")
    check_validation(cfg)
    check_threads(cfg)


WORLD_METRICS = (
    "subject_fidelity",
    "context_fidelity",
    "subject_in_context",
    "class_fidelity",
    "class_drift",
    "class_diversity",
)  # fmt: skip  (world/scores.py SCORES, without importing the world)
EMBEDDING_METRICS = {"dino": "dino_model", "clip_i": "clip_model", "clip_t": "clip_model"}
LOWER_IS_BETTER = ("class_drift",)


def check_validation(cfg: TrainConfig) -> None:
    if not cfg.keep_best:
        return
    known = (*WORLD_METRICS, *EMBEDDING_METRICS)
    if cfg.keep_best not in known:
        raise UsageError(f"--keep-best {cfg.keep_best}: choose from {', '.join(known)}")
    if not cfg.validation_prompts:
        raise UsageError(f"--keep-best {cfg.keep_best}: needs --validation-prompts, a file of the prompts to score")
    if cfg.keep_best in WORLD_METRICS and cfg.model != "world":
        raise UsageError(
            f"--keep-best {cfg.keep_best}: the world's reader scores only --model world; use dino, clip_i or clip_t "
            f"with --dino-model / --clip-model"
        )
    needs = EMBEDDING_METRICS.get(cfg.keep_best)
    if needs and not getattr(cfg, needs):
        raise UsageError(f"--keep-best {cfg.keep_best}: needs {flag_name(needs)}, e.g. {flag_name(needs)} "
                         f"{'facebook/dino-vits16' if needs == 'dino_model' else 'openai/clip-vit-base-patch32'}")  # fmt: skip
    if cfg.use_ema_weights:
        raise UsageError(
            f"--keep-best {cfg.keep_best} and --use-ema-weights: choose one (the kept step's weights, or the average)"
        )


def check_adapter(cfg: TrainConfig) -> None:
    if cfg.adapter == "lora":
        if cfg.lokr_factor != -1:
            raise UsageError(f"--lokr-factor {cfg.lokr_factor}: only with --adapter lokr")
        return
    if cfg.dora:
        raise UsageError(f"--dora: DoRA is a kind of LoRA; with --adapter {cfg.adapter} drop --dora (or use --adapter lora)")
    if cfg.lora_dropout:
        raise UsageError(f"--lora-dropout {cfg.lora_dropout}: not with --adapter {cfg.adapter}; pass --lora-dropout 0")
    if cfg.adapter == "loha" and cfg.lokr_factor != -1:
        raise UsageError(f"--lokr-factor {cfg.lokr_factor}: only with --adapter lokr")
    if cfg.lokr_factor != -1 and cfg.lokr_factor < 2:
        raise UsageError(f"--lokr-factor {cfg.lokr_factor}: must be -1 (as square as possible) or at least 2, e.g. 4 or 8")


def check_optimizer(cfg: TrainConfig) -> None:
    if cfg.optimizer != "prodigy":
        check_each(cfg, ["learning_rate", "text_encoder_lr"], lambda v: 0 < v < 1, "must be between 0 and 1, e.g. 1e-4")
        return
    # Prodigy's learning rate multiplies the step size it estimates: 1.0 is its authors' advice, 0.5-2 a tuning range
    rule = "with --optimizer prodigy must be between 0 and 10, e.g. 1.0 (it scales the step size Prodigy finds)"
    check_each(cfg, ["learning_rate", "text_encoder_lr"], lambda v: 0 < v <= 10, rule)
    if (cfg.train_text_encoder or cfg.method is Method.PIVOTAL) and cfg.text_encoder_lr != cfg.learning_rate:
        raise UsageError(
            f"--text-encoder-lr {cfg.text_encoder_lr}: with --optimizer prodigy it must equal --learning-rate "
            f"{cfg.learning_rate} (Prodigy estimates one step size for every parameter group)"
        )


def check_identifier_config(cfg: IdentifierConfig) -> None:
    check_each(cfg, ["count", "max_chars"], lambda v: v >= 1, "must be at least 1")
    check_each(cfg, ["min_id", "samples"], lambda v: v >= 0, "must not be negative")
    if cfg.measure and len(cfg.class_noun.split()) != 1:
        raise UsageError(f"--class-noun {cfg.class_noun!r}: give one word, e.g. dog")


def check_generate(cfg: GenerateConfig) -> None:
    if not cfg.prompt:
        raise UsageError("--prompt is required, e.g. --prompt 'a photo of sks dog on the grass'")
    if not cfg.output_dir:
        raise UsageError("--output-dir is required: pass a folder for the images")
    if cfg.resolution < 0 or cfg.resolution % 8:
        raise UsageError(f"--resolution {cfg.resolution}: must be a positive multiple of 8 (or 0 for the model's size)")
    if cfg.unet_scale < 0 or cfg.text_encoder_scale < 0 or cfg.guidance < 0:
        raise UsageError("--unet-scale, --text-encoder-scale and --guidance must not be negative")
    check_each(cfg, ["num_images", "steps", "batch_size"], lambda v: v >= 1, "must be at least 1")
    check_threads(cfg)


METRICS = ("dino", "clip-i", "clip-t", "pres", "div")  # as --metrics spells them; the paper's names in upper case


def metric_key(metric: str) -> str:
    """A metric as scores.json and the reports key it: 'clip-i' -> 'clip_i'."""
    return metric.replace("-", "_")


METRIC_NAMES = {metric_key(m): m.upper() for m in METRICS}  # key -> the paper's name, in the paper's order


@dataclass
class EvaluateConfig:
    real: str = opt("", "folder of the subject's real photos")
    generated: str = opt("", "folder of generated images, or of `dreambooth generate` output folders (one per prompt)")
    prompts: str = opt(
        "", "JSON file {image path relative to --generated: prompt}; default: `prompt:` of config.yaml in the image's folder"
    )
    identifier: str = opt(
        "", "identifier word deleted from prompts for CLIP-T, e.g. sks; default: from the LoRA's training config"
    )
    class_generated: str = opt("", "images the fine-tuned model drew from the class prompt (e.g. 'a dog'), for PRES")
    output: str = opt("", "JSON file for the scores (per image, per prompt, means)")
    metrics: list[str] = opt(
        list(METRICS), "metrics to compute; PRES needs --class-generated and DIV --lpips-net, else they are skipped"
    )
    dino_model: str = opt("facebook/dino-vits16", "self-supervised ViT for DINO and PRES: hub id or local folder (safetensors)")
    clip_model: str = opt("openai/clip-vit-base-patch32", "CLIP for CLIP-I and CLIP-T: hub id or local folder (safetensors)")
    lpips_net: str = opt("", "LPIPS AlexNet weights (.safetensors, layout in the README) for DIV")
    batch_size: int = opt(32, "images per embedding batch")
    threads: int = opt(
        0,
        "CPU threads for torch; 0 = chosen: OMP_NUM_THREADS when set, else the cores other processes leave free, "
        "taken again between steps (so a second run on the machine does not slow both many times over)",
    )
    cache: bool = opt(
        True, "keep embeddings in embeddings-cache.safetensors beside --output; a rerun embeds only new or changed images"
    )


def check_evaluate(cfg: EvaluateConfig) -> None:
    for name, what in [
        ("real", "the folder of the subject's photos"),
        ("generated", "the folder of generated images"),
        ("output", "a JSON file for the scores, e.g. scores.json"),
    ]:
        if not getattr(cfg, name):
            raise UsageError(f"{flag_name(name)} is required: pass {what}")
    unknown = [m for m in cfg.metrics if m not in METRICS]
    if unknown or not cfg.metrics:
        raise UsageError(f"--metrics {' '.join(cfg.metrics)}: choose from {' '.join(METRICS)}")
    check_each(cfg, ["batch_size"], lambda v: v >= 1, "must be at least 1")
    check_threads(cfg)


@dataclass
class BenchConfig:
    dataset: str = opt("", "DreamBench-layout folder: <subject>/*.jpg and prompts_and_classes.txt")
    output_dir: str = opt("", "folder for the runs, images, scores and bench.md / .csv / .json / .html")
    subjects: list[str] = opt([], "subjects to run (folder names); default: every subject of the dataset")
    num_prompts: int = opt(25, "the first N of each subject's 25 prompts")
    images_per_prompt: int = opt(4, "images generated for each prompt (and for the class prompt, for PRES)")
    model: str = opt(
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "base model: hub id, local diffusers folder, .safetensors file, or 'tiny'",
        ("pretrained_model_name_or_path",),
    )
    identifier: str = opt("sks", "rare-token identifier bound to each subject")
    method: list[str] = opt(
        ["dreambooth"],
        "how each subject is bound to the prompt (train --method): dreambooth, textual-inversion, pivotal; several "
        "run one after another into OUT/<method>/, and bench.md has a column block per method",
    )
    max_steps: int = opt(400, "training steps per subject", ("max_train_steps",))
    with_prior_preservation: bool = opt(True, "train with the class prior 'a photo of a <class>'")
    num_class_images: int = opt(100, "class images per class noun")
    train_config: str = opt("", "YAML of further `dreambooth train` settings for every subject, e.g. rank, learning_rate")
    loras: str = opt("", "folder of LoRAs already trained, one per subject (LORAS/<subject>/); those are not trained again")
    steps: int = opt(30, "sampling steps", ("num_inference_steps",))
    guidance: float = opt(7.5, "classifier-free guidance scale", ("guidance_scale",))
    seed: int = opt(0, "training seed; image i of each prompt is drawn with seed + i")
    threads: int = opt(
        0,
        "CPU threads for torch; 0 = chosen: OMP_NUM_THREADS when set, else the cores other processes leave free, "
        "taken again between steps (so a second run on the machine does not slow both many times over)",
    )
    batch_size: int = opt(4, "images per pipeline call")
    dino_model: str = opt("facebook/dino-vits16", "self-supervised ViT for DINO and PRES: hub id or local folder (safetensors)")
    clip_model: str = opt("openai/clip-vit-base-patch32", "CLIP for CLIP-I and CLIP-T: hub id or local folder (safetensors)")
    lpips_net: str = opt("", "LPIPS AlexNet weights (.safetensors) for DIV; empty = no DIV")
    fleet: bool = opt(False, "run each subject as a task on Ray (`dreambooth fleet`'s placement and retries; the fleet extra)")
    address: str = opt("", "with --fleet: the Ray cluster to join (auto, ray://host:port); empty = a Ray of this machine")
    gpus_per_run: float = opt(1.0, "with --fleet: GPUs each subject takes (0.5 packs two on a GPU)")
    cpus_per_run: float = opt(1.0, "with --fleet: CPUs each subject takes, and its torch threads")


def check_bench(cfg: BenchConfig) -> None:
    if not cfg.dataset:
        raise UsageError("DATASET_DIR is required: pass the DreamBench folder (<subject>/*.jpg, prompts_and_classes.txt)")
    if not cfg.output_dir:
        raise UsageError("--output-dir is required: pass a folder for the runs and reports")
    methods = [m.value for m in Method]
    for m in cfg.method:
        if m not in methods:
            raise UsageError(f"--method {m}: is not one of {', '.join(methods)}")
    if not cfg.method or len(set(cfg.method)) != len(cfg.method):
        raise UsageError("--method: name each method once, e.g. --method dreambooth textual-inversion pivotal")
    check_each(
        cfg,
        ["num_prompts", "images_per_prompt", "max_steps", "num_class_images", "steps", "batch_size"],
        lambda v: v >= 1,
        "must be at least 1",
    )
    if not cfg.identifier or len(cfg.identifier.split()) != 1:
        raise UsageError(f"--identifier {cfg.identifier!r}: pass one word, e.g. sks")
    check_threads(cfg)
    if not cfg.fleet:
        changed = [n for n in ("address", "gpus_per_run", "cpus_per_run") if getattr(cfg, n) != getattr(BenchConfig(), n)]
        if changed:
            raise UsageError(f"{flag_name(changed[0])}: only with --fleet; add --fleet or drop it")


@dataclass
class FleetConfig:
    fleet: str = opt("", "YAML file of the fleet: `defaults` (any `train` setting) and `subjects` (name, instance_dir, ...)")
    output_dir: str = opt("", "folder for OUT/<subject>/ (as `train` writes it), fleet.json and fleet.html")
    address: str = opt(
        "",
        "Ray cluster to join: auto (the one `ray start` runs here) or ray://host:port; empty = start a Ray of this "
        "machine's CPUs and GPUs inside the command",
    )
    gpus_per_run: float = opt(1.0, "GPUs each subject's run takes (0.5 packs two small runs on a GPU); ignored without GPUs")
    cpus_per_run: float = opt(
        1.0, "CPUs each run takes; its torch uses this many threads (at least one), so runs side by side keep their speed"
    )
    max_retries: int = opt(3, "times a run whose worker died (process killed, machine gone) is started again from its checkpoint")
    bank_dir: str = opt(
        "",
        "folder of the shared class-image bank (as DREAMBOOTH_CACHE); on several machines a path they all share; "
        "default: each machine's cache",
    )
    dashboard: bool = opt(False, "start Ray's dashboard with the embedded Ray (it serves on 127.0.0.1:8265)")
    json: bool = opt(False, "print machine-readable events, one JSON object a line, instead of the progress lines")


def check_fleet(cfg: FleetConfig) -> None:
    if not cfg.fleet:
        raise UsageError("FLEET is required: pass the fleet's YAML file (defaults and subjects)")
    if not cfg.output_dir:
        raise UsageError("--output-dir is required: pass a folder for the subjects' runs and fleet.json")
    if not (cfg.gpus_per_run >= 0 and (cfg.gpus_per_run <= 1 or cfg.gpus_per_run.is_integer())):
        raise UsageError(f"--gpus-per-run {cfg.gpus_per_run}: must be a fraction up to 1 (e.g. 0.5) or a whole number")
    check_each(cfg, ["cpus_per_run"], lambda v: v > 0, "must be positive, e.g. 1 or 2")
    check_each(cfg, ["max_retries"], lambda v: v >= 0, "must not be negative, e.g. 3")
    if cfg.address and not (cfg.address == "auto" or cfg.address.startswith("ray://") or ":" in cfg.address):
        raise UsageError(f"--address {cfg.address}: pass auto, ray://host:port or host:port")
