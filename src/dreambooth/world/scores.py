"""The world's own scores for a model: draw the paper's kinds of prompts, read every sample, count.

- subject fidelity: share of `a photo of sks dog` samples that are the subject (its class, colour and pattern);
- context fidelity: share of `a photo of sks dog on the beach` (each context) samples read in that context, and
  subject in context: ... that are also the subject;
- class fidelity and class drift: share of `a photo of a dog` samples that are a dog, and that are the subject
  (the paper's language drift: the class collapsing onto the subject);
- class diversity: entropy of the (colour, pattern) of the class samples that show the class, as a share of its largest possible value.
"""

from __future__ import annotations

import math
from collections import Counter

from ..sampling import draw_each
from . import GUIDANCE, SAMPLE_STEPS
from .readers import read
from .render import COLOURS, CONTEXTS, HELD_OUT, PATTERNS

SCORES = ("subject_fidelity", "context_fidelity", "subject_in_context", "class_fidelity", "class_drift", "class_diversity")


NEW_CONTEXTS = tuple(c for c in CONTEXTS if c != "plain")  # the photos show the subject on plain backgrounds
# Samples per batch when the world's prompts are drawn. On a CPU a 32 px sample costs about half as much in a batch of
# 16 as in a batch of 2, and little less beyond 32, so the prompts share batches of 32: the page's few samples a prompt
# draw in about half the time, and the demo's 32 a prompt in the batches they had (bench/RESULTS.md, "The world's
# scores in shared batches").
SHARED_BATCH = 32


def draw_named(
    pipe, asked: dict[str, str], n: int, seed: int = 1000, steps: int = SAMPLE_STEPS, guidance: float = GUIDANCE
) -> dict[str, list]:
    """name -> `n` 32 px samples of its prompt, sample i with seed `seed + i` whatever the batch (as `draw` gives
    them one prompt at a time, up to batched arithmetic's rounding), the prompts sharing batches; a prompt two names
    ask for is drawn once."""
    drawn = draw_each(pipe, list(dict.fromkeys(asked.values())), n, seed, steps, guidance, 32, SHARED_BATCH)
    return {name: drawn[prompt] for name, prompt in asked.items()}


def prompts(cls: str, identifier: str = "sks", contexts: tuple[str, ...] = NEW_CONTEXTS) -> dict[str, str]:
    """name -> prompt: 'subject', one 'context:<name>' per context, and 'class'."""
    out = {"subject": f"a photo of {identifier} {cls}"}
    out.update({f"context:{c}": f"a photo of {identifier} {cls} {CONTEXTS[c]}" for c in contexts})
    out["class"] = f"a photo of a {cls}"
    return out


def is_subject(reading: dict, cls: str) -> bool:
    return reading["cls"] == cls and (reading["colour"], reading["pattern"]) == HELD_OUT[cls]


def diversity(readings: list[dict]) -> float:
    counts = Counter((r["colour"], r["pattern"]) for r in readings)
    n = sum(counts.values())
    entropy = -sum(c / n * math.log(c / n) for c in counts.values())
    return entropy / math.log(len(COLOURS) * len(PATTERNS))


def score(readings: dict[str, list[dict]], cls: str) -> dict[str, float]:
    """Scores from the readings of each prompt's samples (keys as `prompts` names them); a score whose prompts were
    not drawn is left out."""

    def share(rs, pred):
        return sum(map(pred, rs)) / len(rs)

    contexts = [k.split(":", 1)[1] for k in readings if k.startswith("context:")]
    out = {}
    if readings.get("subject"):
        out["subject_fidelity"] = share(readings["subject"], lambda r: is_subject(r, cls))
    if contexts:
        out["context_fidelity"] = sum(share(readings[f"context:{c}"], lambda r: r["context"] == c) for c in contexts) / len(
            contexts
        )
        out["subject_in_context"] = sum(
            share(readings[f"context:{c}"], lambda r: r["context"] == c and is_subject(r, cls)) for c in contexts
        ) / len(contexts)
    if readings.get("class"):
        out["class_fidelity"] = share(readings["class"], lambda r: r["cls"] == cls)
        out["class_drift"] = share(readings["class"], lambda r: is_subject(r, cls))
        of_class = [r for r in readings["class"] if r["cls"] == cls]
        out["class_diversity"] = diversity(of_class) if of_class else 0.0
    return {k: round(v, 4) for k, v in out.items()}


def prompt_name(prompt: str, cls: str, identifier: str) -> str | None:
    """Which of `prompts`' kinds a free-written prompt is: 'subject', 'context:<name>' or 'class'; None when it names
    neither the subject nor the class."""
    words = prompt.lower().replace(",", " ").split()
    text = " ".join(words)
    if cls not in words:
        return None
    context = next((c for c, phrase in CONTEXTS.items() if phrase and phrase in text), None)
    if identifier.lower() in words:
        return f"context:{context}" if context else "subject"
    return "class" if context is None else None


def score_prompts(reader, images: dict[str, list], cls: str, identifier: str) -> dict[str, float]:
    """The world's scores of samples drawn from any prompts (prompt -> images): each prompt read as the subject, the
    subject in a context, or the class (`prompt_name`); prompts of neither are not scored."""
    readings: dict[str, list[dict]] = {}
    for prompt, imgs in images.items():
        name = prompt_name(prompt, cls, identifier)
        if name is not None:
            readings.setdefault(name, []).extend(read(reader, imgs))
    return score(readings, cls)


def sample_and_score(
    pipe,
    reader,
    cls: str,
    n: int = 32,
    seed: int = 1000,
    steps: int = SAMPLE_STEPS,
    guidance: float = GUIDANCE,
    identifier: str = "sks",
    contexts=None,
) -> tuple[dict[str, float], dict[str, list]]:
    """Draw `n` samples of each prompt (same seeds for every model, so before/after compare like for like), read, score."""
    asked = prompts(cls, identifier) if contexts is None else prompts(cls, identifier, tuple(contexts))
    images = draw_named(pipe, asked, n, seed, steps, guidance)
    readings = {name: read(reader, imgs) for name, imgs in images.items()}
    return score(readings, cls), images
