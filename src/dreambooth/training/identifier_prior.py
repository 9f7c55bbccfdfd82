"""The identifier's prior, measured (the DreamBooth paper's §4.1): a rare token carries little meaning, so the base
model reads `a photo of X dog` much as it reads `a photo of a dog`; a word with a prior (`red`, `cat`, an abbreviation
the encoder knows) moves the prompt somewhere else, which training must then unlearn.

The measure is the text encoders' own: `shift` is the cosine distance between the prompt embeddings of
`a photo of X <class>` and of `a photo of a <class>` (every embedding the family's denoiser reads, over the whole
sequence), after each feature is standardised by its spread over the reference prompt's positions, so that the few
large features every position shares do not decide it alone. A drawing measure (how the base draws the prompt) comes
from the caller where a reader can see the images (the world's); it is handed in as a function."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import warn
from ..families import Family, text_encoders, tokenizers
from .identifier import candidates

# words with a prior to measure beside the rare candidates: a class noun, a colour, and abbreviations the rare end
# of CLIP's vocabulary holds (real SD draws `jpg` as a picture's artefacts, `mvc` and `esg` as logos and charts)
PRIOR_WORDS = ("dog", "red", "jpg", "mvc", "esg")
REFERENCES = 16  # rare candidates whose shifts say what "no prior" measures on a model
# `train` warns when the identifier moves the prompt this many times the references' upper quartile. Rare tokens fall
# in two groups on the world's encoder (about 0.01, and about 0.12 like `the`): the quartile is the upper group's
STRONG = 1.75
CHEAP_PARAMETERS = 1_000_000_000

Draws = Callable[[list[str], str], dict[str, dict[str, float]]]


def prompts(identifier: str, class_noun: str) -> tuple[str, str]:
    """(the instance prompt, the class prompt) the measure compares."""
    return f"a photo of {identifier} {class_noun}", f"a photo of a {class_noun}"


def standardised(values: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`values` (..., features) with each feature centred and scaled by its spread over the reference's positions."""
    flat = reference.reshape(-1, reference.shape[-1])
    return (values - flat.mean(0)) / (flat.std(0) + 1e-6)


@torch.no_grad()
def shifts(pipe, family: Family, words: list[str], class_noun: str) -> dict[str, float]:
    """word -> how far the text encoders move `a photo of <word> <class>` from `a photo of a <class>` (0: not at all;
    1: as far as an unrelated prompt)."""
    encoders = list(text_encoders(pipe, family).values())
    device = encoders[0].device
    reference = prompts("a", class_noun)[1]
    embedded = family.encode_prompts(
        tokenizers(pipe, family), encoders, [reference, *(prompts(w, class_noun)[0] for w in words)], device
    )
    mask = embedded.get("mask")
    per_word = torch.zeros(len(words))
    kinds = 0
    for key, value in embedded.items():
        if key == "mask" or not torch.is_floating_point(value):
            continue
        if value.dim() == 2:  # a pooled embedding: one position has no spread to standardise by, and the
            continue  # sequence it is pooled from is measured already
        value = value.float().cpu()
        if mask is not None and mask.shape == value.shape[:2]:
            value = value * mask.cpu()[..., None].float()
        z = standardised(value, value[0])
        per_word += 1 - torch.nn.functional.cosine_similarity(z[1:].flatten(1), z[:1].flatten(1), dim=1)
        kinds += 1
    return {w: round(float(s) / max(kinds, 1), 4) for w, s in zip(words, per_word)}


def rare_references(pipe, family: Family) -> list[str]:
    """The rare candidates whose shifts say what "no prior" measures on this model (none in a byte-level vocabulary)."""
    return [w for w, _ in candidates(tokenizers(pipe, family)[0], REFERENCES, seed=0)]


def reference_shift(measured: dict[str, float], rare: list[str]) -> float:
    """The upper quartile of the rare candidates' shifts: what "no prior" measures on this model."""
    return float(torch.tensor([measured[w] for w in rare]).quantile(0.75))


def noun_after(prompt: str, identifier: str) -> str:
    """The class noun of an instance prompt: the word after the identifier ('a photo of sks dog' -> 'dog')."""
    words = prompt.lower().replace(",", " ").split()
    at = words.index(identifier.lower()) if identifier.lower() in words else -1
    return words[at + 1] if 0 <= at < len(words) - 1 else ""


def cheap(pipe, family: Family) -> bool:
    """The text encoders are CLIP alone and CLIP-sized (SD 1.x / 2.x, SDXL, the embedded UNet models): measuring a few
    prompts on the CPU takes seconds. T5-XXL and the LLM encoders would take minutes there, so `train` does not
    measure a family that has one (a long tokenizer), at any size: a run encodes its prompts with them once."""
    if family.long_tokenizers:
        return False
    return sum(p.numel() for e in text_encoders(pipe, family).values() for p in e.parameters()) < CHEAP_PARAMETERS


def check_prior(pipe, family: Family, instance_prompt: str, identifier: str | None) -> None:
    """Warn (one line) when the identifier moves the prompt `STRONG` times as far as rare tokens do."""
    class_noun = noun_after(instance_prompt, identifier or "")
    if not identifier or not class_noun or not cheap(pipe, family):
        return
    ratios = relative_shifts(pipe, family, [identifier], class_noun)
    if ratios and ratios[identifier] > STRONG:
        warn(
            f"--instance-prompt: the base model reads '{identifier}' as a word with a prior (it moves "
            f"'{prompts(identifier, class_noun)[0]}' {ratios[identifier]:.1f}x as far as rare tokens do); "
            f"training must unlearn it; `dreambooth identifier --measure --class-noun {class_noun}` lists weak ones"
        )


def relative_shifts(pipe, family: Family, words: list[str], class_noun: str) -> dict[str, float]:
    """word -> its shift as a multiple of what rare tokens measure on this model (above `STRONG`: a prior); empty
    where the vocabulary has no rare candidates to compare with (byte-level BPE)."""
    rare = rare_references(pipe, family)
    if not rare:
        return {}
    measured = shifts(pipe, family, [*rare, *words], class_noun)  # one batch: the class prompt encoded once
    typical = max(reference_shift(measured, rare), 1e-4)
    return {w: measured[w] / typical for w in words}


def measure(
    pipe, family: Family, class_noun: str, count: int, seed: int, words: list[str], draws: Draws | None = None
) -> list[dict]:
    """The identifier table: `count` rare candidates, the weakest measured of a pool three times as large, and
    `words`, each with its shift (and its drawn readings where `draws` is given), weakest prior first."""
    tokenizer = tokenizers(pipe, family)[0]
    pool = [w for w, _ in candidates(tokenizer, 3 * count, seed=seed)]
    pooled = shifts(pipe, family, pool, class_noun)
    chosen = sorted(pool, key=lambda w: pooled[w])[:count]
    extra = [w for w in words if w not in chosen]
    measured = {**{w: pooled[w] for w in chosen}, **shifts(pipe, family, extra, class_noun)} if extra else pooled
    drawn = draws([*chosen, *extra], class_noun) if draws else {}
    rows = [
        {"word": w, "kind": "rare" if w in chosen else "compared", "shift": measured[w], **drawn.get(w, {})}
        for w in [*chosen, *extra]
    ]
    return sorted(rows, key=prior_order)


def prior_order(row: dict) -> tuple[float, float]:
    """Weakest prior first: by how differently the base draws it where drawn, then by the text encoders' shift."""
    return (-row.get("same_draw", 0.0), row["shift"])


def table(rows: list[dict], class_noun: str) -> str:
    drawn = any("same_draw" in r for r in rows)
    head = f"{'identifier':<11} {'kind':<9} {'shift':>6}"
    head += f" {'as ' + class_noun:>10} {'same draw':>9}" if drawn else ""
    lines = [head]
    for r in rows:
        line = f"{r['word']:<11} {r['kind']:<9} {r['shift']:>6.3f}"
        if drawn:
            line += f" {r.get('as_class', float('nan')):>10.2f} {r.get('same_draw', float('nan')):>9.2f}"
        lines.append(line)
    return "\n".join(lines)
