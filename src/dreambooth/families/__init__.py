"""Base-model families as plug-ins: one module per family (`sd.py` for SD 1.x/2.x, `sdxl.py`), each exporting
`FAMILY`, a `Family` that says everything the rest of the tool needs to know about it. Nothing outside this
folder asks which family a model is; it asks the family. `docs/adding-a-family.md` says how to add one."""

from __future__ import annotations

from pathlib import Path

import torch

from .base import Family, PromptEmbeddings, checkpoint_has

__all__ = ["Family", "PromptEmbeddings", "checkpoint_has", "all_families", "family_of", "family_of_file", "by_name"]


def all_families() -> list[Family]:
    from . import flux, flux2_klein, qwenimage, sd, sd3, sdxl, z_image

    # The most specific first: an SDXL pipeline would also pass a looser SD test.
    return [z_image.FAMILY, flux2_klein.FAMILY, flux.FAMILY, sd3.FAMILY, qwenimage.FAMILY, sdxl.FAMILY, sd.FAMILY]


def family_of(pipe) -> Family:
    for family in all_families():
        if family.recognise(pipe):
            return family
    raise ValueError(f"{type(pipe).__name__} is of no family this tool knows")


def family_of_file(path: Path) -> Family:
    """The family of a single-file checkpoint, read from its tensor names; SD 1.x/2.x when nothing else matches."""
    for family in all_families():
        if family.recognise_file(path):
            return family
    from . import sd

    return sd.FAMILY


def by_name(name: str) -> Family | None:
    """The family a LoRA header names: its own name, or a label older versions wrote ("sd1", "tiny-sdxl", ...)."""
    for family in all_families():
        if name == family.name or name in family.legacy_names:
            return family
    return None


def components(pipe, family: Family) -> dict[str, torch.nn.Module]:
    """The trainable parts of `pipe` by component name: the denoiser, then the text encoders."""
    names = (family.denoiser, *family.text_encoders)
    return {n: getattr(pipe, n) for n in names if getattr(pipe, n, None) is not None}


def text_encoders(pipe, family: Family) -> dict[str, torch.nn.Module]:
    return {n: getattr(pipe, n) for n in family.text_encoders}


def tokenizers(pipe, family: Family) -> list:
    return [getattr(pipe, n) for n in family.tokenizers]
