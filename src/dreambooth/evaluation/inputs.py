"""What an evaluation scores: the image files of the real and generated folders, each generated image's
prompt, and the identifier to delete from prompts for CLIP-T."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from ..errors import UsageError
from ..fields import saved_settings
from ..training.identifier import guess_identifier
from ..training.photos import IMAGE_SUFFIXES

GRID_NAME = "grid.png"  # `dreambooth generate` writes it beside the images it drew; it is not one of them


def find_images(folder: str | Path, flag: str, nested: bool = False) -> list[Path]:
    """Image files of `folder` (and of its subfolders when `nested`), sorted; grid.png and hidden files left out."""
    root = Path(folder).expanduser()
    if not root.exists():
        raise UsageError(f"{flag} {folder}: no such folder; pass the folder that holds the images")
    if not root.is_dir():
        raise UsageError(f"{flag} {folder}: is a file, not a folder; pass the folder that holds the images")
    dirs = [root]
    if nested:
        dirs += sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    found = [
        p
        for d in dirs
        for p in sorted(d.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and p.name != GRID_NAME and not p.name.startswith(".")
    ]
    if not found:
        where = " or its subfolders" if nested else ""
        raise UsageError(f"{flag} {folder}: no images in it{where} (.png, .jpg, ...); pass the folder that holds them")
    return found


def relative_name(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def read_prompt_file(path: str, root: Path, images: list[Path]) -> dict[Path, str]:
    """--prompts: one JSON object {"image path relative to --generated": "prompt", ...}."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"--prompts {path}: no such file; pass a JSON file mapping image files to prompts")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UsageError(f"--prompts {path}: not valid JSON (line {e.lineno}); fix the file") from None
    except UnicodeDecodeError:
        raise UsageError(f"--prompts {path}: not UTF-8 text; save it as UTF-8 JSON") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise UsageError(f'--prompts {path}: expected one JSON object {{"image-000.png": "a sks dog on the beach", ...}}')
    by_name = {relative_name(q, root): q for q in images}
    out = {}
    for name, prompt in data.items():
        image = by_name.get(PurePosixPath(name.replace("\\", "/")).as_posix())
        if image is None:
            raise UsageError(
                f"--prompts {path}: '{name}' is not an image in --generated {root}; "
                f"name files by their path relative to that folder"
            )
        out[image] = prompt
    return out


def prompts_of(images: list[Path], root: Path, prompts_file: str = "") -> dict[Path, str | None]:
    """Each image's prompt: from --prompts, else the `prompt:` of config.yaml in its folder, else None."""
    given = read_prompt_file(prompts_file, root, images) if prompts_file else {}
    settings = {folder: saved_settings(folder) for folder in dict.fromkeys(p.parent for p in images)}
    out = {}
    for p in images:
        prompt = given.get(p) or settings[p.parent].get("prompt")
        out[p] = str(prompt) if prompt else None
    return out


def identifier_from_runs(images: list[Path]) -> str:
    """The identifier of the LoRA the images were drawn with: generate's config.yaml names the LoRA folder,
    whose own config.yaml holds the instance and class prompts. Empty when that trail is missing."""
    for folder in dict.fromkeys(p.parent for p in images):
        lora = saved_settings(folder).get("lora")
        if not lora:
            continue
        path = Path(str(lora)).expanduser()
        trained = saved_settings(path if path.is_dir() else path.parent)
        found = guess_identifier(str(trained.get("instance_prompt") or ""), str(trained.get("class_prompt") or ""))
        if found:
            return found
    return ""
