"""New tokens for a subject: their names (`<s0><s1>`, each subject its own), the prompts they replace the token
abstraction in, and their rows in a family's tokenizers and embedding tables.

The rows train apart from the table: each encoder's input embedding gets a `TokenRows` module whose parameter holds
the new tokens' vectors, and a forward hook that puts them in place of the table's rows for those ids. The table
itself stays frozen (no gradient, no optimiser, no weight decay), so every other row is bitwise what it was, by
construction; `table_rows` reads what a pipeline loaded with the saved vectors would hold."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import UsageError, warn
from ..families import Family

T5_KEY = "t5"  # the key of the encoders that take new tokens only with --t5-tokens


@dataclass(frozen=True)
class NewTokens:
    """The new tokens of a run: `per_subject[k]` are subject k's, written together in its prompts."""

    abstraction: str  # the word in the prompts they replace (--token-abstraction)
    per_subject: tuple[tuple[str, ...], ...]

    @property
    def strings(self) -> list[str]:
        return [t for tokens in self.per_subject for t in tokens]

    def written(self, subject: int = 0) -> str:
        """What a prompt says for subject `subject`: `<s0><s1>`."""
        return "".join(self.per_subject[subject])

    def in_prompt(self, prompt: str, subject: int = 0) -> str:
        """`prompt` with each whole-word abstraction replaced by the subject's tokens."""
        return abstraction_pattern(self.abstraction).sub(self.written(subject), prompt)


def new_tokens(abstraction: str, subjects: int, per_subject: int) -> NewTokens:
    """`per_subject` tokens for each of `subjects` subjects, numbered on: <s0><s1>, <s2><s3>, ..."""
    names = [f"<s{i}>" for i in range(subjects * per_subject)]
    return NewTokens(abstraction, tuple(tuple(names[k * per_subject : (k + 1) * per_subject]) for k in range(subjects)))


def abstraction_pattern(abstraction: str) -> re.Pattern:
    return re.compile(rf"(?<![\w<]){re.escape(abstraction)}(?![\w>])")


def check_prompts(abstraction: str, prompts: list[tuple[str, str]]) -> None:
    """Refuse a prompt without the abstraction: (where, prompt) pairs, `where` naming the flag or entry."""
    for where, prompt in prompts:
        if not abstraction_pattern(abstraction).search(prompt):
            raise UsageError(
                f"{where} {prompt!r}: has no {abstraction!r}, which --method textual-inversion / pivotal replaces by "
                f"the new tokens; write it where the identifier goes, e.g. 'a photo of {abstraction} dog' (or set "
                f"--token-abstraction)"
            )


def warn_uncaptioned(abstraction: str, captions: list[str]) -> None:
    """Photo captions without the abstraction train without the new tokens: say how many."""
    missing = [c for c in captions if not abstraction_pattern(abstraction).search(c)]
    if missing:
        warn(
            f"--token-abstraction {abstraction}: {len(missing)} photo captions do not contain it, so those photos "
            f"train without the new tokens (e.g. {missing[0]!r})"
        )


def token_components(family: Family, t5_tokens: bool) -> dict[str, str]:
    """The encoders of `family` that take new tokens (component -> tokenizer component), T5 only with --t5-tokens."""
    tokenizer_of = dict(zip(family.text_encoders, family.tokenizers))
    return {name: tokenizer_of[name] for name, key in family.embedding_keys.items() if key != T5_KEY or t5_tokens}


def check_family(family: Family, t5_tokens: bool, method: str) -> None:
    """Refuse a family that takes no new tokens yet, and --t5-tokens on one without T5."""
    if not family.embedding_keys:
        raise UsageError(
            f"--method {method}: not available for {family.title} yet (this tool adds new tokens to CLIP, T5 and "
            f"Qwen2.5-VL encoders); use --method dreambooth"
        )
    if t5_tokens and T5_KEY not in family.embedding_keys.values():
        raise UsageError(f"--t5-tokens: {family.title} has no T5 encoder; leave it out")


def check_new(pipe, components: dict[str, str], tokens: NewTokens, model: str) -> None:
    """Refuse new tokens a tokenizer already has (a textual inversion loaded into the base, or saved with it)."""
    for tokenizer_name in dict.fromkeys(components.values()):
        vocabulary = getattr(pipe, tokenizer_name).get_vocab()
        taken = [t for t in tokens.strings if t in vocabulary]
        if taken:
            raise UsageError(
                f"--model {model}: its {tokenizer_name} already has the token {taken[0]!r} that --method "
                f"textual-inversion / pivotal adds; pass a base model without textual inversions loaded into it"
            )


class TokenRows(torch.nn.Module):
    """The new tokens' vectors for one embedding table, trained apart from it. `learning` False: they are read
    detached, so they get no gradient and the optimiser leaves them (and their state) as they are."""

    ids: torch.Tensor

    def __init__(self, ids: list[int], vectors: torch.Tensor):
        super().__init__()
        self.register_buffer("ids", torch.tensor(ids, dtype=torch.long, device=vectors.device), persistent=False)
        self.weight = torch.nn.Parameter(vectors.detach().float().clone())
        self.learning = True

    def substitute(self, ids: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        """The embedding layer's output with the new tokens' rows put in where `ids` are theirs."""
        hits = torch.eq(ids[..., None], self.ids)  # (..., n)
        found = hits.any(-1)
        if not bool(found.any()):
            return embedded
        vectors = self.weight if self.learning else self.weight.detach()
        rows = vectors[hits.to(torch.long).argmax(-1)].to(embedded.dtype)
        return torch.where(found[..., None], rows, embedded)


def initial_vectors(table: torch.Tensor, tokenizer, count: int, word: str, seed: int) -> torch.Tensor:
    """`count` starting vectors: the mean of `word`'s token rows (each the same), or random at the table's own scale
    (its rows' standard deviation, as diffusers' pivotal-tuning script starts them), from a generator of `seed`."""
    if word:
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if not ids:
            raise UsageError(f"--initializer-word {word!r}: the tokenizer makes no token of it; pass a word, e.g. dog")
        return table[ids].float().mean(0, keepdim=True).repeat(count, 1)
    generator = torch.Generator().manual_seed(seed)
    scale = table.float().std()
    return (torch.randn(count, table.shape[1], generator=generator) * scale).to(table.device)


def add_rows(pipe, family: Family, tokens: NewTokens, word: str, seed: int, t5_tokens: bool) -> dict[str, TokenRows]:
    """Add `tokens` to each encoder of `family` that takes them (and its tokenizer), with their starting vectors in the
    table's new rows and in a `TokenRows` hooked onto its input embedding; returns them by component."""
    added: set[int] = set()  # tokenizers shared by two encoders (the tiny SDXL's) take the tokens once
    out = {}
    for n, (name, tokenizer_name) in enumerate(token_components(family, t5_tokens).items()):
        encoder, tokenizer = getattr(pipe, name), getattr(pipe, tokenizer_name)
        if id(tokenizer) not in added:
            tokenizer.add_tokens(tokens.strings)
            added.add(id(tokenizer))
        ids = tokenizer.convert_tokens_to_ids(tokens.strings)
        if max(ids) >= encoder.get_input_embeddings().weight.shape[0]:
            with torch.random.fork_rng(devices=[]):  # the new rows' random start is overwritten below
                encoder.resize_token_embeddings(max(ids) + 1, mean_resizing=False)
        table = encoder.get_input_embeddings().weight
        with torch.no_grad():
            vectors = initial_vectors(table[: min(ids)], tokenizer, len(ids), word, seed + n)
            table[ids] = vectors.to(table.dtype)
        rows = TokenRows(ids, vectors)
        attach(encoder, rows)
        out[name] = rows
    return out


def attach(encoder, rows: TokenRows) -> None:
    """Hook `rows` onto every embedding module that holds the encoder's input table (T5's encoder keeps its own
    module over the shared weight) and register it as a submodule, so the encoder's parameters include it."""
    table = encoder.get_input_embeddings()
    table.add_module("new_tokens", rows)
    for module in encoder.modules():
        if isinstance(module, torch.nn.Embedding) and module.weight is table.weight:
            module.register_forward_hook(lambda m, args, out: rows.substitute(args[0], out))


def rows_of(encoder) -> TokenRows | None:
    return getattr(encoder.get_input_embeddings(), "new_tokens", None)


def vectors(rows: dict[str, TokenRows], family: Family) -> dict[str, torch.Tensor]:
    """The trained vectors by file key (clip_l, clip_g, t5, ...)."""
    return {family.embedding_keys[name]: r.weight.detach().float().cpu().contiguous() for name, r in rows.items()}


def table_rows(encoder, ids: list[int]) -> torch.Tensor:
    """What the encoder's table holds at `ids` (the starting vectors, while `TokenRows` trains apart)."""
    return encoder.get_input_embeddings().weight[ids].detach()
