"""How a subject is bound to a prompt: DreamBooth (a LoRA), textual inversion (new token embeddings alone) or pivotal
tuning (both, in phases). Each method makes a `Plan`, what trains and when; the training loop asks the plan and never
the method's name. `tokens.py` adds new tokens to any family's tokenizers and embedding tables, `embeddings.py`
writes and reads the files that carry them."""

from __future__ import annotations

from collections.abc import Callable

from ..config import Method, TrainConfig
from . import dreambooth, pivotal, textual_inversion
from .plan import Plan

__all__ = ["Plan", "plan_of"]

PLANS: dict[Method, Callable[[TrainConfig], Plan]] = {
    Method.DREAMBOOTH: dreambooth.plan,
    Method.TEXTUAL_INVERSION: textual_inversion.plan,
    Method.PIVOTAL: pivotal.plan,
}


def plan_of(cfg: TrainConfig) -> Plan:
    """The run's plan, after the method's checks of the settings (one line each, before anything is loaded)."""
    return PLANS[cfg.method](cfg)
