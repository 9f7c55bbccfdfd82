"""Textual inversion (Gal et al. 2022), the DreamBooth paper's baseline: the subject becomes new token embeddings,
which alone train (at --learning-rate); the denoiser and the text encoders stay frozen and no LoRA is written."""

from __future__ import annotations

from ..config import TrainConfig
from ..errors import UsageError
from ..models import recommended
from .plan import Plan

# settings that shape a LoRA, which textual inversion does not train
LORA_OPTIONS = ("rank", "lora_alpha", "lora_dropout", "dora", "adapter", "lokr_factor", "target_modules",
                "train_text_encoder", "text_encoder_lr", "text_encoder_target_modules")  # fmt: skip


def given_lora_options(cfg: TrainConfig) -> list[str]:
    """The LoRA settings `cfg` gives: those that differ from both the general default and the model's recommendation
    (an embedded model recommends a rank, which a run that trains no LoRA did not ask for)."""
    suggested = recommended(cfg.model, "train")
    default = TrainConfig()
    return [
        name
        for name in LORA_OPTIONS
        if getattr(cfg, name) != getattr(default, name) and getattr(cfg, name) != suggested.get(name, getattr(default, name))
    ]


def plan(cfg: TrainConfig) -> Plan:
    given = given_lora_options(cfg)
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise UsageError(
            f"{flag}: --method textual-inversion trains new token embeddings and no LoRA; drop {flag}, or use "
            f"--method pivotal (the tokens, then a LoRA)"
        )
    if cfg.export == "kohya":
        raise UsageError(
            "--export kohya: --method textual-inversion writes no LoRA; its <name>_emb.safetensors is the file for "
            "ComfyUI and A1111 / Forge (drop --export)"
        )
    if cfg.tokens_per_subject < 1:
        raise UsageError(f"--tokens-per-subject {cfg.tokens_per_subject}: must be at least 1, e.g. 2")
    return Plan(lora=False, token_steps=cfg.max_steps, token_lr=cfg.learning_rate)
