"""The files that carry new tokens: `<name>_emb.safetensors` (each encoder's rows under its key: `clip_l`, `clip_g`,
`t5`, `qwen2_5_vl`; the token strings in the header), which diffusers' `load_textual_inversion`, ComfyUI
(`embedding:<name>_emb`) and A1111 / Forge read; the same rows bundled into the kohya LoRA file
(`bundle_emb.<name>_emb.clip_l`), as A1111 / Forge read them; and loading them into a pipeline."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from .. import atomic
from ..errors import UsageError
from ..families import Family

SUFFIX = "_emb.safetensors"
TOKENS_KEY = "dreambooth.tokens"  # header: the token strings, subjects apart: "<s0><s1>|<s2><s3>"


def file_name(out: Path) -> str:
    """`<name>_emb.safetensors`, the name the run's folder gives: its letters, digits, `_` and `-`, anything else as
    `_`, since the name is also the word a prompt names it by, and ComfyUI splits prompts at spaces and A1111 / Forge
    split a bundled embedding's key at dots (`bundle_emb.<name>.clip_l`)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", out.resolve().name) + SUFFIX


def trigger(out: Path, subject: int, subjects: int) -> str:
    """The word ComfyUI and A1111 / Forge know a subject's embedding by: its file's name without the suffix
    (`dog_emb`; with several subjects `dog_emb1`, `dog_emb2`, ...)."""
    stem = file_name(out).removesuffix(".safetensors")
    return stem if subjects == 1 else f"{stem}{subject + 1}"


def save(out: Path, vectors: dict[str, torch.Tensor], per_subject: list[list[str]], meta: dict[str, str]) -> list[Path]:
    """Write the run's embeddings: every token's rows in one file, and with several subjects a file per subject (so
    `embedding:<trigger>` in ComfyUI draws one subject). Returns the paths, the run's file first."""
    from safetensors.torch import save as to_bytes

    header = {**meta, TOKENS_KEY: "|".join("".join(tokens) for tokens in per_subject)}
    path = out / file_name(out)
    atomic.write_bytes(path, to_bytes(vectors, metadata=header))
    written = [path]
    if len(per_subject) > 1:
        first = 0
        for k, tokens in enumerate(per_subject):
            rows = {key: v[first : first + len(tokens)].contiguous() for key, v in vectors.items()}
            part = out / f"{trigger(out, k, len(per_subject))}.safetensors"
            atomic.write_bytes(part, to_bytes(rows, metadata={**meta, TOKENS_KEY: "".join(tokens)}))
            written.append(part)
            first += len(tokens)
    return written


def find(folder: Path) -> Path | None:
    """A run folder's embeddings file (the one holding every token; a subject's own ends in `_emb<k>`), or None."""
    found = sorted(folder.glob(f"*{SUFFIX}"))
    return found[0] if found else None


def header_tokens(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get(TOKENS_KEY, "")


def read_tokens(path: Path) -> list[str]:
    """The token strings of an embeddings file, in row order."""
    import re

    return re.findall(r"<[^<>]+>", header_tokens(path))


def read(path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path)), read_tokens(path)
    except Exception as e:  # safetensors raises its own error type for a damaged file
        raise UsageError(f"--lora {path}: not a readable embeddings file ({type(e).__name__}); is it complete?") from None


def load_into(pipe, family: Family, path: Path) -> list[str]:
    """Load an embeddings file into `pipe`, each key into its encoder: with diffusers' `load_textual_inversion` where
    the family's pipeline has it (SD, SDXL, FLUX.1), else as that loader does it (`add_rows_plainly`: SD3, Qwen-Image,
    whose pipelines lack it). Returns the tokens."""
    from diffusers.loaders import TextualInversionLoaderMixin

    state, tokens = read(path)
    by_key = {key: name for name, key in family.embedding_keys.items()}
    tokenizer_of = dict(zip(family.text_encoders, family.tokenizers))
    for key, rows in state.items():
        name = by_key.get(key)
        encoder = getattr(pipe, name) if name else None
        width = encoder.get_input_embeddings().weight.shape[1] if encoder is not None else None
        if encoder is None or len(tokens) != rows.shape[0] or rows.shape[1] != width:
            raise UsageError(
                f"--lora {path}: its {key!r} rows ({tuple(rows.shape)}, {len(tokens)} tokens in its header) do not fit "
                f"{family.title}{f' ({name} is {width} wide)' if width else ''}; pass the --model it was trained on"
            )
        tokenizer = getattr(pipe, tokenizer_of[str(name)])
        if isinstance(pipe, TextualInversionLoaderMixin) and not any(t in tokenizer.get_vocab() for t in tokens):
            # a tensor of n rows for n tokens, which the loader reads though its annotation names files and dicts
            vectors: Any = rows.to(encoder.dtype)
            pipe.load_textual_inversion(vectors, token=tokens, text_encoder=encoder, tokenizer=tokenizer)
        else:  # no loader in the pipeline, or a tokenizer another encoder shares already has the tokens
            add_rows_plainly(encoder, tokenizer, tokens, rows)
    return tokens


def add_rows_plainly(encoder, tokenizer, tokens: list[str], rows: torch.Tensor) -> None:
    """What diffusers' textual-inversion loader does, with transformers alone: the tokens into the tokenizer, the
    table resized to hold them, their rows set."""
    tokenizer.add_tokens([t for t in tokens if t not in tokenizer.get_vocab()])
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if max(ids) >= encoder.get_input_embeddings().weight.shape[0]:
        encoder.resize_token_embeddings(max(ids) + 1)
    with torch.no_grad():
        encoder.get_input_embeddings().weight[ids] = rows.to(encoder.dtype)


def bundle(kohya_file: Path, vectors: dict[str, torch.Tensor], per_subject: list[list[str]], out: Path) -> None:
    """Add the embeddings to the kohya LoRA file as A1111 / Forge read bundled ones: `bundle_emb.<trigger>.<key>`,
    each subject under its own trigger word (its embeddings file's name)."""
    from safetensors import safe_open
    from safetensors.torch import save as to_bytes

    with safe_open(str(kohya_file), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    first = 0
    for k, tokens in enumerate(per_subject):
        name = trigger(out, k, len(per_subject))
        for key, v in vectors.items():
            tensors[f"bundle_emb.{name}.{key}"] = v[first : first + len(tokens)].contiguous()
        first += len(tokens)
    atomic.write_bytes(kohya_file, to_bytes(tensors, metadata=meta))
