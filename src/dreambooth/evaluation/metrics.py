"""The DreamBooth paper's metrics (Ruiz et al. 2022) on embeddings that are already computed.

DINO / CLIP-I: mean cosine similarity over all pairs (generated image, real image).
CLIP-T: mean cosine similarity of each generated image with its prompt, identifier deleted.
PRES: DINO between images drawn from the class prompt and the real images (lower = prior kept).
DIV: mean LPIPS distance between the pairs of images drawn from the same prompt.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[n, d] x [m, d] -> [n, m] cosine similarities, computed in float64 so self-similarity is 1 to ~1e-12."""
    return F.normalize(a.double(), dim=-1) @ F.normalize(b.double(), dim=-1).T


def rowwise_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of a[i] with b[i]: [n]."""
    return (F.normalize(a.double(), dim=-1) * F.normalize(b.double(), dim=-1)).sum(-1)


def remove_identifier(prompt: str, identifier: str) -> str:
    """Every whole-word occurrence of the identifier (case-insensitive) is deleted and the spaces closed up:
    'a sks dog on the beach' -> 'a dog on the beach'. Words that merely contain it ('sksx', 'sks-dog') stay."""
    if not identifier:
        return prompt
    text = re.sub(rf"(?<![\w-]){re.escape(identifier)}(?![\w-])", " ", prompt, flags=re.IGNORECASE)
    text = " ".join(text.split())
    return re.sub(r" ([,.;:!?])", r"\1", text)


def mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None
