"""`dreambooth demo`: DreamBooth in the world, end to end on a CPU, with scores before and after.

Renders a subject's photo folder (a held-out colour and pattern of one class on plain backgrounds), scores the
base model, trains a LoRA with prior preservation, scores again, and writes a grid and an HTML report.
"""

from __future__ import annotations

import dataclasses
import html
import json
from pathlib import Path

from PIL import Image

from .. import atomic
from ..config import Method, TrainConfig
from ..fields import settings
from ..sampling import grid
from ..training.photos import IMAGE_SUFFIXES, MASK_SUFFIX
from . import (
    CLASS_CAPTION_DROPOUT,
    CLASS_CONTEXTS,
    CLASS_IMAGES,
    DEMO_STEPS,
    MASK_BACKGROUND_WEIGHT,
    MASKED_LOSS,
    MODEL,
    PRESERVE_UNCONDITIONAL,
    PRIOR_LOSS_WEIGHT,
    TEXT_ENCODER_SCALE,
    folder,
)
from .render import CONTEXTS, HELD_OUT, render, render_mask, subject_scenes
from .scores import SCORES, prompts

IDENTIFIER = "sks"
TOKEN_ABSTRACTION = "TOK"
NEW_TOKENS = "<s0><s1>"  # train's new tokens for one subject, at its default --tokens-per-subject
VALIDATIONS = 5  # validations during the demo's training
VALIDATION_SAMPLES = 8  # samples of each prompt at each
UPSCALE = 3  # 32 px images are shown 96 px wide


def demo_train_config(
    cls: str, photos: Path, out: Path, max_steps: int, prior: bool = True, method: str = "dreambooth", **more
) -> TrainConfig:
    """The settings the demo and the world's tests train with: the world model's recommended ones (the registry's),
    and any `more` (e.g. masked_loss=True). With `method` textual-inversion or pivotal the instance prompt holds the
    token abstraction, whose new tokens start as the class noun."""
    if Method(method).new_tokens:
        more = {"initializer_word": cls, **more}
    return settings(
        TrainConfig,
        model=MODEL,
        method=method,
        instance_dir=str(photos),
        instance_prompt=f"a photo of {prompt_word(method)} {cls}",
        output_dir=str(out),
        with_prior_preservation=prior,
        class_prompt=f"a photo of a {cls}",
        max_steps=max_steps,
        num_samples=0,
        seed=0,
        **more,
    )


def prompt_word(method: str) -> str:
    """What the demo's training prompts say for the subject: the identifier, or the token abstraction."""
    return TOKEN_ABSTRACTION if Method(method).new_tokens else IDENTIFIER


def drawn_word(method: str) -> str:
    """What the demo's scored prompts say for the subject: the identifier, or the learnt tokens."""
    return NEW_TOKENS if Method(method).new_tokens else IDENTIFIER


def write_photos(cls: str, folder: Path, n: int = 5, seed: int = 0) -> Path:
    """The subject's photos, each with its exact mask beside it (cls-i.mask.png, for --masked-loss)."""
    for i, scene in enumerate(subject_scenes(cls, n, seed)):
        atomic.save_image(Image.fromarray(render(scene)), folder / f"{cls}-{i}.png")
        atomic.save_image(Image.fromarray(render_mask(scene), "L"), folder / f"{cls}-{i}{MASK_SUFFIX}")
    return folder


def write_class_prompts(cls: str, path: Path) -> Path:
    """The class prompt in each of the world's contexts, the plain one included (--class-prompts-file): prior
    preservation that keeps the contexts as well as the class."""
    atomic.write_text(path, "".join(f"a photo of a {cls} {phrase}".rstrip() + "\n" for phrase in CONTEXTS.values()))
    return path


def validation_section(out: Path, kept: str) -> str:
    """The validation curves of the training run (lora/validation/), and the step the LoRA is."""
    found = [(name, title) for name, title in (("loss.png", "loss on the photos and class images, fixed noise"),
                                                ("scores.png", "the reader's scores of the report's prompts"))
             if (out / "lora" / "validation" / name).is_file()]  # fmt: skip
    if not found:
        return ""
    images = "".join(f"<p>{html.escape(title)}<br><img src='lora/validation/{name}'></p>" for name, title in found)
    return f"<h2>Validation during training</h2><p>{html.escape(kept)}</p>" + images


def demo_settings(
    cls: str,
    out: Path,
    max_steps: int = DEMO_STEPS,
    contexts=None,
    masked_loss: bool = MASKED_LOSS,
    mask_background_weight: float = MASK_BACKGROUND_WEIGHT,
    class_contexts: bool = CLASS_CONTEXTS,
    keep_best: str = "",
    class_images: int = CLASS_IMAGES,
    class_caption_dropout: float = CLASS_CAPTION_DROPOUT,
    preserve_unconditional: bool = PRESERVE_UNCONDITIONAL,
    validations: int = VALIDATIONS,
    validation_samples: int = VALIDATION_SAMPLES,
    prior_loss_weight: float = PRIOR_LOSS_WEIGHT,
    threads: int = 0,
    method: str = "dreambooth",
) -> TrainConfig:
    """What the demo trains (the photos in out/subject, the LoRA to out/lora): `demo_train_config` with the demo's
    additions. Writes the class prompts and the validation prompts it names into `out`.
    `masked_loss`: train on the photos' exact masks, the background's loss weighted `mask_background_weight`.
    `class_contexts`: prior preservation from the class prompt in every context (`write_class_prompts`), else from
    `a photo of a <cls>`; `class_images` of them in all (the class-image bank keeps them for later runs), a share
    `class_caption_dropout` of them trained with an empty prompt, aimed at the base model's own prediction when
    `preserve_unconditional`. Training is validated `validations` times (the loss, and the reader's scores of
    `validation_samples` samples of each of the demo's prompts); `keep_best` makes the step with the best of that
    score the LoRA. `threads`: torch's CPU threads (0: chosen for the world's model, one). `method`: train's --method
    (textual inversion and pivotal tuning train new tokens in the identifier's place)."""
    word = prompt_word(method)
    asked = prompts(cls, word) if contexts is None else prompts(cls, word, contexts=tuple(contexts))
    atomic.write_text(out / "validation-prompts.txt", "".join(f"{p}\n" for p in asked.values()))
    return demo_train_config(
        cls,
        out / "subject",
        out / "lora",
        max_steps,
        masked_loss=masked_loss,
        mask_background_weight=mask_background_weight,
        class_prompts_file=str(write_class_prompts(cls, out / "class-prompts.txt")) if class_contexts else "",
        num_class_images=class_images,
        class_caption_dropout=class_caption_dropout,
        preserve_unconditional=preserve_unconditional and class_caption_dropout > 0,
        prior_loss_weight=prior_loss_weight,
        validation_loss=True,
        validation_prompts=str(out / "validation-prompts.txt"),
        validation_steps=max(1, max_steps // validations),
        num_validation_images=validation_samples,
        keep_best=keep_best,
        threads=threads,
        method=method,
    )


def big(image: Image.Image) -> Image.Image:
    return image.resize((image.width * UPSCALE, image.height * UPSCALE), Image.Resampling.NEAREST)


def run_demo(output_dir: str, max_steps: int = DEMO_STEPS, cls: str = "dog", n: int = 32, contexts=None, **settings) -> dict:
    """`contexts`: the contexts to ask for the subject in (default: all but plain). `settings`: what to train with,
    as `demo_settings` takes them (masks, class prompts in contexts, class images, class caption dropout, validation,
    keep-best...; each defaults to the demo's)."""
    from ..evaluation.validation_scores import validation_scorer
    from ..generation import load_run
    from ..models import load_pipeline
    from ..training.loop import train
    from . import readers
    from .scores import sample_and_score

    out = Path(output_dir)
    photos = write_photos(cls, out / "subject")
    colour, pattern = HELD_OUT[cls]
    print(f"subject: a {colour} {pattern} {cls}, never seen by the base model; photos in {photos}", flush=True)
    reader, info = readers.load(folder() / "reader")
    pipe = load_pipeline(MODEL)
    word = drawn_word(settings.get("method", "dreambooth"))
    print(f"scoring the base model ({n} samples per prompt)", flush=True)
    before, before_images = sample_and_score(pipe, reader, cls, n, identifier=word, contexts=contexts)
    cfg = demo_settings(cls, out, max_steps, contexts=contexts, **settings)
    # the demo owns its folder: a run there before is set aside, not continued
    lora_dir = train(dataclasses.replace(cfg, overwrite=True), score=validation_scorer(cfg))
    load_run(pipe, lora_dir, text_encoder_scale=TEXT_ENCODER_SCALE, model=MODEL)
    print(f"scoring the fine-tuned model ({n} samples per prompt)", flush=True)
    after, after_images = sample_and_score(pipe, reader, cls, n, identifier=word, contexts=contexts)
    scores = {"before": before, "after": after, "reader_accuracy": info["accuracy"]}
    atomic.write_text(out / "scores.json", json.dumps(scores, indent=1))
    write_report(out, cls, photos, before_images, after_images, scores, kept_words(lora_dir, max_steps), word=word)
    for name in SCORES:
        print(f"  {name:<20} before {before.get(name, float('nan')):.2f}   after {after.get(name, float('nan')):.2f}")
    print(f"demo done: report {out / 'report.html'}, LoRA {lora_dir}", flush=True)
    return scores


def kept_words(lora_dir: Path, max_steps: int) -> str:
    """Which step the demo's LoRA is: the last, or the one --keep-best kept and why."""
    from ..training.validation import best_so_far

    kept = best_so_far(lora_dir)
    if kept is None:
        return f"The LoRA is the weights of the last step, {max_steps}."
    return (
        f"The LoRA is step {kept['step']} of {max_steps}: the best {kept['metric'].replace('_', ' ')} "
        f"({kept['value']:.2f}) of the validations (--keep-best {kept['metric']})."
    )


def write_report(
    out: Path, cls: str, photos: Path, before: dict, after: dict, scores: dict, kept: str = "", per_row: int = 8,
    word: str = IDENTIFIER,
) -> None:  # fmt: skip
    (out / "report").mkdir(parents=True, exist_ok=True)
    shots = sorted(p for p in photos.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.endswith(MASK_SUFFIX))
    atomic.save_image(big(grid([Image.open(p) for p in shots], cols=8)), out / "report" / "photos.png")
    rows = []
    for name in before:
        for when, images in (("before", before), ("after", after)):
            atomic.save_image(
                big(grid(images[name][:per_row], cols=per_row)), out / "report" / f"{name.replace(':', '-')}-{when}.png"
            )
        rows.append(name)
    atomic.save_image(grid([big(grid(after[name][:per_row], cols=per_row)) for name in rows], cols=1), out / "grid.png")
    asked = prompts(cls, word)
    table = "".join(
        f"<tr><td>{k.replace('_', ' ')}</td><td>{scores['before'].get(k, float('nan')):.2f}</td>"
        f"<td>{scores['after'].get(k, float('nan')):.2f}</td></tr>"
        for k in SCORES
    )
    sections = "".join(
        f"<h3>{html.escape(asked[name])}</h3><p>before<br><img src='report/{name.replace(':', '-')}-before.png'></p>"
        f"<p>after<br><img src='report/{name.replace(':', '-')}-after.png'></p>"
        for name in rows
    )
    colour, pattern = HELD_OUT[cls]
    page = (
        "<!doctype html><meta charset='utf-8'><title>DreamBooth in the world</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:60em}td,th{padding:3px 12px;border-bottom:1px solid #ccc}"
        "img{image-rendering:pixelated}</style>"
        f"<h1>DreamBooth in the world: a {colour} {pattern} {cls}</h1>"
        "<p>The base model was trained from scratch on rendered scenes and never saw this colour and pattern on a "
        f"{cls}. Scores are read from every sample by the world's reader (accuracy on fresh renders with sampling "
        f"artefacts: {html.escape(json.dumps(scores['reader_accuracy']['artefacts']))}).</p>"
        "<h2>The subject's photos</h2><img src='report/photos.png'>"
        "<h2>Scores</h2><table><tr><th></th><th>base model</th><th>after DreamBooth</th></tr>"
        + table
        + "</table>"
        + validation_section(out, kept)
        + "<h2>Samples (same seeds before and after)</h2>"
        + sections
    )
    atomic.write_text(out / "report.html", page)
