"""The procedural world: scenes rendered from code, a base model trained on them from scratch, readers that score
any image, and the demo. Its base model is the embedded model `world` (see embedded.py)."""

from __future__ import annotations

from pathlib import Path

from ..models import EMBEDDED, recommended

MODEL = "world"
TEXT_ENCODER_SCALE = recommended(MODEL, "generate")["text_encoder_scale"]  # the identifier drowns context words at 1.0
DEMO_STEPS = recommended(MODEL, "train")["max_steps"]


def folder() -> Path:
    """The shipped base model's diffusers folder (with the reader in `reader/`)."""
    return EMBEDDED[MODEL].path()
