"""What a method trains, and when: the one thing the training loop asks about the method."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    lora: bool  # adapters on the denoiser (and on the text encoders with --train-text-encoder), trained every step
    token_steps: int = 0  # the new tokens train in steps 0 .. token_steps - 1; 0: the run adds no tokens
    token_lr: float = 0.0  # their learning rate

    @property
    def tokens(self) -> bool:
        return self.token_steps > 0

    def tokens_train(self, step: int) -> bool:
        """Whether the new tokens train in optimiser step `step` (0-based)."""
        return step < self.token_steps
