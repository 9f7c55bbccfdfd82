"""What the Train tab offers: every `TrainConfig` field is either a control here (basic on the first screen, the rest
under "Advanced", in groups) or named in OMITTED with the reason. The tab builds its widgets from these lists, and the
page's values become a config through the same parsing the command line's flags go through (fields.parse and
fields.settings), so a field added to TrainConfig cannot be left off the page unnoticed: tests/ui/test_controls.py
fails for a field in neither list.
"""

from __future__ import annotations

import dataclasses
import enum

from ..config import EMBEDDING_METRICS, WORLD_METRICS, TrainConfig
from ..errors import UsageError
from ..fields import field_type, fields_of, parse, settings

# the first screen: what a newcomer sets (the base model beside the photos, the rest in these rows)
BASIC_ROWS = (
    ("with_prior_preservation", "train_text_encoder"),
    ("class_prompt",),
    ("num_class_images", "max_steps", "rank", "resolution"),
    ("learning_rate", "text_encoder_lr", "export"),
)
BASIC = ("model", *(name for row in BASIC_ROWS for name in row))

# the "Advanced" accordion, group by group
# fmt: off
ADVANCED: dict[str, tuple[str, ...]] = {
    "Adapter": ("adapter", "lora_alpha", "dora", "lora_dropout", "lokr_factor", "target_modules",
                "text_encoder_target_modules"),
    "Optimiser": ("optimizer", "lr_scheduler", "lr_warmup_steps", "batch_size", "gradient_accumulation_steps",
                  "max_grad_norm", "adam_beta1", "adam_beta2", "adam_weight_decay", "adam_epsilon", "ema_decay",
                  "use_ema_weights"),
    "Photos, masks and captions": ("masked_loss", "mask_background_weight", "bucketing", "center_crop", "random_flip",
                                   "caption_dropout"),
    "Prior preservation": ("class_prompts_file", "class_caption_dropout", "preserve_unconditional", "prior_loss_weight",
                           "prior_mode", "class_image_steps"),
    "Validation": ("validation_prompts", "validation_loss", "validation_steps", "num_validation_images", "keep_best",
                   "validation_prompt", "dino_model", "clip_model"),
    "Loss and noise levels": ("snr_gamma", "weighting_scheme", "logit_mean", "logit_std", "mode_scale",
                              "training_guidance", "max_sequence_length"),
    "Memory and speed": ("base_quantization", "mixed_precision", "gradient_checkpointing", "compile", "vae"),
    "Samples, seed and checkpoints": ("num_samples", "sample_steps", "guidance_scale", "sample_batch_size", "seed",
                                      "checkpoint_every", "checkpoints_total_limit"),
    "Several subjects": ("subjects",),
    "Method: textual inversion, pivotal tuning": ("method", "token_abstraction", "tokens_per_subject", "initializer_word",
                                                  "ti_fraction", "t5_tokens"),
}
# fmt: on

# fields the page sets itself or does not offer, and why
OMITTED = {
    "instance_dir": "the page trains on its own copy of the photos dropped or the folder named (WORKSPACE/uploads/<run>)",
    "instance_prompt": "built from the identifier and class noun fields: 'a photo of <identifier> <class>'",
    "output_dir": "each page run gets a new folder, WORKSPACE/runs/<class>-<date>-<time>",
    "class_dir": "a folder on the server to read and write: not for whoever reaches a shared page; the shared "
    "class-image bank is used",
    "threads": "the page's training takes its share of the cores beside the server's other work (the default, 0)",
    "resume": "the Resume button continues a stopped run",
    "overwrite": "a page run never reuses a folder, so there is nothing to overwrite",
    "allow_pickle": "a pickled base model runs code from its file: not offered to whoever reaches a shared page",
    "detect_anomaly": "a debugging aid of the command line that slows training many times",
}

SHOWN = BASIC + tuple(name for group in ADVANCED.values() for name in group)

# fields whose value is a file of text: the page shows the text (a box, a line a prompt) and writes the file
TEXT_FILES = {
    "class_prompts_file": "class-prompts.txt",
    "validation_prompts": "validation-prompts.txt",
    "subjects": "subjects.yaml",
}

LABELS = {
    "model": "Base model",
    "with_prior_preservation": "Prior preservation",
    "class_prompt": "Class prompt (empty: 'a photo of a <class>')",
    "num_class_images": "Class images",
    "max_steps": "Steps",
    "rank": "Rank",
    "learning_rate": "Learning rate",
    "train_text_encoder": "Text-encoder LoRA",
    "text_encoder_lr": "Text-encoder learning rate",
    "resolution": "Resolution (0 = model's)",
    "export": "File for ComfyUI / A1111 / Forge",
    "class_prompts_file": "Class prompts in contexts, one a line (class images are drawn across them)",
    "validation_prompts": "Validation prompts, one a line (drawn and scored every validation)",
    "subjects": "Several subjects (YAML list; each instance_dir a folder in the workspace or a --photo-root folder)",
    "keep_best": "Keep the best step by",
    "validation_prompt": "Validation image prompt (empty: none)",
    "base_quantization": "Base-model quantization (CUDA GPU)",
    "method": "Method (textual inversion and pivotal write the token abstraction in place of the identifier)",
    "token_abstraction": "Token abstraction (the word that becomes the new tokens)",
    "ti_fraction": "Share of the steps the new tokens train (pivotal)",
    "t5_tokens": "New tokens in T5 too (FLUX.1, SD3)",
}

KEEP_BEST_CHOICES = ("", *WORLD_METRICS, *EMBEDDING_METRICS)  # --keep-best's values (config.check_validation)
CHOICE_NAMES = {"": "(none)"}
EXPORT_NAMES = {"": "the family's (kohya where there is one)", "kohya": "kohya", "none": "none"}


def field(name: str) -> dataclasses.Field:
    return next(f for f in fields_of(TrainConfig) if f.name == name)


def label(name: str) -> str:
    return LABELS.get(name) or name.replace("_", " ").capitalize()


def kind(name: str) -> str:
    """How the control shows the field: check, choice, int, float, text, words (a list), lines (a file's text)."""
    f = field(name)
    t = field_type(TrainConfig, f)
    if name in TEXT_FILES:
        return "lines"
    if f.metadata.get("choices") or name == "keep_best":
        return "choice"
    if t is bool:
        return "check"
    if t is int:
        return "int"
    if t is float:
        return "float"
    if t == list[str]:
        return "words"
    return "text"


def choices(name: str) -> list[tuple[str, str]]:
    """(shown, value) pairs of a choice field."""
    values = KEEP_BEST_CHOICES if name == "keep_best" else field(name).metadata["choices"]
    names = EXPORT_NAMES if name == "export" else CHOICE_NAMES
    return [(names.get(v, v.replace("_", " ")), v) for v in values]


def shown_value(cfg: TrainConfig, name: str):
    """The control's value for the config's setting (a TEXT_FILES field: the file's name, which the caller reads)."""
    value = getattr(cfg, name)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list):
        return " ".join(value)
    return value


def as_values(shown: dict) -> dict:
    """The controls' values as config values, checked and converted as flags are; UsageError naming the control and
    its flag. TEXT_FILES fields must already hold their file's path."""
    values: dict = {}
    for name, value in shown.items():
        if kind(name) in ("int", "float") and value is None:
            value = ""  # an emptied number box: refused by name, as an empty flag value is
        try:
            values.update(parse(TrainConfig, {name: value}, source="the page"))
        except UsageError as e:  # "the page: key 'x': <what is wrong>"
            raise UsageError(f"{label(name)} (--{name.replace('_', '-')}): {str(e).split(': ', 2)[-1]}") from None
    return values


def config(shown: dict, **page) -> TrainConfig:
    """The page's config: defaults <- the base model's recommended settings <- the controls <- `page` (what the page
    sets itself: instance_dir, instance_prompt, output_dir), as the command line builds it from flags."""
    return settings(TrainConfig, **{**as_values(shown), **page})
