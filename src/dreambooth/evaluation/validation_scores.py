"""The scorer a training's validation uses (--validation-prompts): built here, where the scoring models live, and
handed to `train`, so that training/ needs neither the world nor the evaluation code."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .. import atomic
from ..config import TrainConfig
from ..training.identifier import guess_identifier
from ..training.photos import slug

# (samples of each prompt, the folder to write them under, the subject's photos) -> scores
Scorer = Callable[[dict[str, list], Path, list[Path]], dict[str, float]]


def validation_scorer(cfg: TrainConfig) -> Scorer:
    """The world's reader on the world model; DINO against the photos with --dino-model; CLIP-I and CLIP-T with
    --clip-model. The scoring models load at the first validation that scores, once."""
    identifier = guess_identifier(cfg.instance_prompt, cfg.class_prompt) or ""
    loaded: dict = {}

    def score(images: dict[str, list], folder: Path, photos: list[Path]) -> dict[str, float]:
        out: dict[str, float] = {}
        if cfg.model == "world":
            out.update(world_scores(loaded, images, cfg.instance_prompt, identifier))
        if cfg.dino_model or cfg.clip_model:
            out.update(embedding_scores(loaded, cfg, images, folder, photos, identifier))
        return out

    return score


def world_scores(loaded: dict, images: dict[str, list], instance_prompt: str, identifier: str) -> dict[str, float]:
    from ..world import folder, readers
    from ..world.render import CLASSES
    from ..world.scores import score_prompts

    if "reader" not in loaded:
        loaded["reader"] = readers.load(folder() / "reader")[0]
    cls = next((w for w in reversed(instance_prompt.lower().split()) if w in CLASSES), "")
    return score_prompts(loaded["reader"], images, cls, identifier)


def embedding_scores(
    loaded: dict, cfg: TrainConfig, images: dict[str, list], folder: Path, photos: list[Path], identifier: str
) -> dict[str, float]:
    """DINO / CLIP-I / CLIP-T of the samples, by `dreambooth evaluate`'s own scorer (samples written under `folder`,
    one folder a prompt)."""
    from ..config import EvaluateConfig
    from .evaluate import Evaluator

    prompts, generated = {}, []
    for prompt, imgs in images.items():
        for i, image in enumerate(imgs):
            path = folder / slug(prompt) / f"{i:03d}.png"
            atomic.save_image(image, path)
            prompts[path] = prompt
            generated.append(path)
    if "evaluator" not in loaded:
        metrics = (["dino"] if cfg.dino_model else []) + (["clip-i", "clip-t"] if cfg.clip_model else [])
        loaded["evaluator"] = Evaluator(
            EvaluateConfig(metrics=metrics, dino_model=cfg.dino_model or "-", clip_model=cfg.clip_model or "-")
        )
        loaded["evaluator"].load()
    means = loaded["evaluator"].score(photos, generated, folder, prompts, identifier)["means"]
    return {k: round(float(v), 4) for k, v in means.items() if k in ("dino", "clip_i", "clip_t") and v is not None}
