"""How the world's base model draws an identifier (the DreamBooth paper's §4.1, measured where a reader can see):
`a photo of X <class>` and `a photo of a <class>` drawn with the same seeds and read. A word without a prior draws
what the class prompt draws; a word with one (`red`, `striped`, `cat`) draws something else."""

from __future__ import annotations

from collections.abc import Callable

from . import folder, readers
from .scores import draw_named

SEED = 1000  # the demo's sampling seed (scores.sample_and_score)


def reading(r: dict) -> tuple[str, ...]:
    return (r["cls"], r["colour"], r["pattern"], r["context"])


def drawn_prior(pipe, reader, words: list[str], cls: str, n: int = 8, seed: int = SEED) -> dict[str, dict[str, float]]:
    """word -> {'as_class': share of the n samples of `a photo of <word> <cls>` read as a <cls>, 'same_draw': share read
    exactly as the class prompt's sample with the same seed is (class, colour, pattern and context)}."""

    asked = {"": f"a photo of a {cls}", **{word: f"a photo of {word} {cls}" for word in words}}
    drawn = {word: readers.read(reader, images) for word, images in draw_named(pipe, asked, n, seed).items()}
    base = drawn.pop("")
    out = {}
    for word, found in drawn.items():
        out[word] = {
            "as_class": round(sum(r["cls"] == cls for r in found) / n, 4),
            "same_draw": round(sum(reading(a) == reading(b) for a, b in zip(found, base)) / n, 4),
        }
    return out


def measure_draws(pipe, n: int) -> Callable[[list[str], str], dict[str, dict[str, float]]]:
    """`drawn_prior` on `pipe` (the world's base) with the shipped reader, as `dreambooth identifier --measure` takes it."""
    reader, _ = readers.load(folder() / "reader")
    return lambda words, cls: drawn_prior(pipe, reader, words, cls, n)
