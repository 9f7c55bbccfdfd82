"""Class-prior images: generate those missing with the base model, keep those already there."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
from pathlib import Path

from tqdm.auto import tqdm

from .. import atomic
from ..errors import UsageError
from ..models import identity
from ..sampling import draw_jobs
from .photos import IMAGE_SUFFIXES, slug


def existing(class_dir: Path) -> list[Path]:
    return sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def ensure_class_images(
    pipe,
    wanted: list[tuple[str, Path, int]],
    resolution: int,
    seed: int = 0,
    steps: int = 25,
    batch_size: int = 4,
    guidance_scale: float = 7.5,
    autocast=contextlib.nullcontext,
    shard: tuple[int, int] = (0, 1),
    barrier=lambda: None,
) -> list[list[Path]]:
    """Make each folder of `wanted` (prompt, folder, count) hold at least `count` images of its prompt; return the
    first `count` of each.

    Image i of a folder is `class-{i:05d}.png`, drawn with seed `seed + i`, written atomically: an interrupted run
    resumes where it stopped and makes the same images it would have made, and processes sharing the work
    (`shard` = (rank, number of processes)) make the images one process would. The prompts share batches (class
    prompts in contexts ask for a few images each: one batch of them costs about what one image does on a CPU).
    """
    missing = []
    for prompt, folder, num in wanted:
        folder.mkdir(parents=True, exist_ok=True)
        names = {p.name for p in existing(folder)}
        free = (i for i in itertools.count() if f"class-{i:05d}.png" not in names)
        missing.append(list(itertools.islice(free, max(0, num - len(names)))))
    # With several processes each draws every n-th missing image; all must list the folders before any writes.
    barrier()
    rank, num_processes = shard
    jobs = [(prompt, folder, i) for (prompt, folder, _), todo in zip(wanted, missing) for i in todo[rank::num_processes]]
    bar = tqdm(total=len(jobs), desc="class images", unit="img", disable=not jobs)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        # image i of a folder always comes from seed + i, whatever else shares its batch
        drawn = draw_jobs(pipe, [(p, seed + i) for p, _, i in chunk], steps, guidance_scale, resolution, batch_size,
                          autocast=autocast)  # fmt: skip
        for (_, folder, i), image in zip(chunk, drawn):
            atomic.save_image(image, folder / f"class-{i:05d}.png")
        bar.update(len(chunk))
    bar.close()
    return [existing(folder)[:num] for _, folder, num in wanted]


def cache_root() -> Path:
    if os.environ.get("DREAMBOOTH_CACHE"):
        return Path(os.environ["DREAMBOOTH_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "dreambooth"


def bank_dir(
    model: str,
    vae: str,
    class_prompt: str,
    resolution: int,
    steps: int,
    guidance: float,
    seed: int,
    precision: str = "fp32",
) -> Path:
    """Where the class images of these settings live, shared by every run and subject that asks for the same.

    Image i depends only on (base model, VAE, prompt, resolution, sampler, steps, guidance, seed + i, the precision
    it was drawn in: "fp32", or the autocast's "fp16" / "bf16"), so runs that agree on those share images; asking
    for more images adds to the same folder."""
    key = [identity(model), identity(vae), class_prompt, resolution, "dpmsolver++", steps, guidance, seed]
    # Earlier versions left the precision out. Their fp32 banks keep their key; banks they drew under fp16 autocast
    # (on a GPU) ran the VAE in fp16, which can leave black images, so an autocast precision makes a new key.
    if precision != "fp32":
        key.append(precision)
    # 41 then 40: the folder names earlier versions made (cut at 40 characters after the dashes were trimmed)
    name = slug(class_prompt, 41, "class")[:40]
    return cache_root() / "class-images" / f"{name}-{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]}"


def read_class_prompts(class_prompt: str, prompts_file: str) -> list[str]:
    """The class prompts of prior preservation: `class_prompt` (when given), then each line of `prompts_file`
    (blank lines and lines starting with # skipped), each once."""
    prompts = [class_prompt] if class_prompt else []
    if prompts_file:
        path = Path(prompts_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
            raise UsageError(
                f"--class-prompts-file {prompts_file}: cannot read it ({why}); pass a UTF-8 text file, one prompt a line"
            ) from None
        lines = [line.strip() for line in text.splitlines()]
        found = [line for line in lines if line and not line.startswith("#")]
        if not found:
            raise UsageError(
                f"--class-prompts-file {prompts_file}: holds no prompt; write one a line, e.g. 'a photo of a dog on the beach'"
            )
        prompts += found
    return list(dict.fromkeys(prompts))


def shares(total: int, parts: int) -> list[int]:
    """`total` images spread over `parts` prompts as evenly as they go, the first prompts taking the remainder."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def prompt_folder(class_dir: str | Path, class_prompt: str) -> Path:
    """The folder of one class prompt's images inside a --class-dir shared by several prompts."""
    digest = hashlib.sha256(class_prompt.encode()).hexdigest()[:8]
    return Path(class_dir).expanduser() / f"{slug(class_prompt, 40, 'class')}-{digest}"
