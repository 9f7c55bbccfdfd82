"""The rare-token identifier: candidates from the tokenizer's vocabulary, and how a prompt tokenises."""

from __future__ import annotations

import random
import re
from functools import lru_cache
from importlib import resources

from ..errors import warn

WORD_END = "</w>"


@lru_cache(maxsize=1)
def english_short_words() -> frozenset[str]:
    text = (resources.files("dreambooth") / "assets" / "english_short_words.txt").read_text(encoding="utf-8")
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def candidates(tokenizer, count: int = 20, max_chars: int = 3, min_id: int = 35000, seed: int = 0) -> list[tuple[str, int]]:
    """Rare identifiers as the paper picks them: rare tokens of <= `max_chars` letters that are one
    whole-word token each and not an English word. CLIP's BPE ids grow as merges get rarer, so the
    rare end of the vocabulary is ids >= `min_id`. Drawn at random (seeded), listed by id."""
    words = english_short_words()
    pool = []
    for token, token_id in tokenizer.get_vocab().items():
        if token_id < min_id or not token.endswith(WORD_END):
            continue
        word = token[: -len(WORD_END)]
        if re.fullmatch(rf"[a-z]{{2,{max_chars}}}", word) and word not in words:
            pool.append((word, token_id))
    pool.sort(key=lambda x: x[1])
    chosen = random.Random(seed).sample(pool, min(count, len(pool)))
    return sorted(chosen, key=lambda x: x[1])


# byte-level BPE (Qwen's tokenizers) marks a token that starts after a space with this
SPACE_MARK = "\u0120"


def tokenise(tokenizer, text: str, in_prompt: bool = False) -> list[tuple[str, list[tuple[str, int]]]]:
    """Each word of `text` with the tokens it becomes: [(word, [(token, id), ...]), ...]; `in_prompt`: as it becomes
    after a space, inside a prompt (byte-level BPE tokenizes 'sks' alone and ' sks' differently; CLIP's the same)."""
    out = []
    for word in text.split():
        ids = tokenizer((" " if in_prompt else "") + word, add_special_tokens=False).input_ids
        tokens = [
            (t.replace(WORD_END, "").removeprefix(SPACE_MARK), i) for t, i in zip(tokenizer.convert_ids_to_tokens(ids), ids)
        ]
        out.append((word, [(t, i) for t, i in tokens if t]))  # a lone space marker is no piece of the word
    return out


def guess_identifier(instance_prompt: str, class_prompt: str = "") -> str | None:
    """The identifier in 'a photo of sks dog': the word not in the class prompt, else the one before the noun."""
    words = instance_prompt.lower().replace(",", " ").split()
    if class_prompt:
        common = set(class_prompt.lower().replace(",", " ").split()) | {"a", "an", "the", "of", "photo"}
        extra = [w for w in words if w not in common]
        if extra:
            return extra[0]
    return words[-2] if len(words) >= 2 else None


def check_identifier(tokenizer, instance_prompt: str, class_prompt: str = "") -> None:
    """Warn when the identifier is several tokens: the paper binds the subject to one rare token."""
    ident = guess_identifier(instance_prompt, class_prompt)
    if not ident:
        return
    tokens = tokenise(tokenizer, ident, in_prompt=True)[0][1]
    if len(tokens) > 1:
        pieces = " + ".join(t for t, _ in tokens)
        warn(
            f"--instance-prompt: identifier '{ident}' splits into {len(tokens)} tokens ({pieces}); "
            f"a single rare token binds better, see `dreambooth identifier`"
        )
