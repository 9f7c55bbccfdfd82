"""`dreambooth demo --subjects dog cat`: several subjects trained into one LoRA (`train --subjects`) in the world, and
how well each identifier draws its own subject and how often it draws another one instead (bleeding)."""

from __future__ import annotations

import json
from pathlib import Path

from .. import atomic
from ..config import TrainConfig
from ..fields import settings
from ..sampling import grid
from . import DEMO_STEPS, MODEL, TEXT_ENCODER_SCALE, folder
from .demo import big, write_photos
from .render import HELD_OUT
from .scores import draw_named, is_subject

IDENTIFIERS = ("sks", "rox", "tcs", "zah", "slu")  # rare one-token words (`dreambooth identifier`), one a subject


def subject_scores(readings: dict[str, list[dict]], classes: list[str]) -> dict[str, float]:
    """From the readings of each class's `a photo of <identifier> <class>` samples (keyed by class): `<cls>` the share
    that are that subject; `<cls>_bleeding` the share that show another subject instead: its class, or its colour and
    pattern; and from `class:<cls>` (`a photo of a <cls>`) samples, `<cls>_class_drift`: class samples that are the subject."""
    out = {}
    for cls in classes:
        others = [c for c in classes if c != cls]
        rs = readings[cls]
        out[cls] = sum(is_subject(r, cls) for r in rs) / len(rs)
        out[f"{cls}_bleeding"] = sum(
            any(r["cls"] == o or (r["colour"], r["pattern"]) == HELD_OUT[o] for o in others) for r in rs
        ) / len(rs)
        if f"class:{cls}" in readings:
            out[f"{cls}_class_drift"] = sum(is_subject(r, cls) for r in readings[f"class:{cls}"]) / len(readings[f"class:{cls}"])
    return {k: round(v, 4) for k, v in out.items()}


def run_several(output_dir: str, classes: list[str], max_steps: int = DEMO_STEPS, n: int = 32, threads: int = 0) -> dict:
    """Render each class's subject, train one LoRA on all of them (identifiers from IDENTIFIERS, prior preservation
    per class), draw `n` samples of each subject's prompt and of each class prompt, and score them."""
    from ..evaluation.validation_scores import validation_scorer
    from ..lora.files import load_lora
    from ..models import load_pipeline
    from ..training.loop import train
    from . import readers

    out = Path(output_dir)
    entries = []
    for cls, identifier in zip(classes, IDENTIFIERS):
        photos = write_photos(cls, out / "subjects" / cls)
        entries += [f"- instance_dir: {photos.resolve()}", f"  instance_prompt: a photo of {identifier} {cls}",
                    f"  class_prompt: a photo of a {cls}"]  # fmt: skip
        colour, pattern = HELD_OUT[cls]
        print(f"subject {identifier}: a {colour} {pattern} {cls}; photos in {photos}", flush=True)
    atomic.write_text(out / "subjects.yaml", "\n".join(entries) + "\n")
    # the demo's settings (the world model's recommended ones), the subjects file in place of one subject's flags
    cfg = settings(TrainConfig, model=MODEL, subjects=str(out / "subjects.yaml"), output_dir=str(out / "lora"),
                   with_prior_preservation=True, max_steps=max_steps, num_samples=0, seed=0, overwrite=True, threads=threads)  # fmt: skip
    lora_dir = train(cfg, score=validation_scorer(cfg))
    pipe = load_pipeline(MODEL)
    load_lora(pipe, lora_dir, text_encoder_scale=TEXT_ENCODER_SCALE, model=MODEL)
    reader, _ = readers.load(folder() / "reader")
    asked = {cls: f"a photo of {identifier} {cls}" for cls, identifier in zip(classes, IDENTIFIERS)}
    asked.update({f"class:{cls}": f"a photo of a {cls}" for cls in classes})
    images = draw_named(pipe, asked, n)
    scores = subject_scores({name: readers.read(reader, imgs) for name, imgs in images.items()}, classes)
    atomic.write_text(out / "scores.json", json.dumps(scores, indent=1))
    atomic.save_image(grid([big(grid(images[name][:8], cols=8)) for name in asked], cols=1), out / "grid.png")
    for cls in classes:
        print(f"  {asked[cls]!r}: the subject {scores[cls]:.2f}, another subject {scores[cls + '_bleeding']:.2f}; "
              f"{asked['class:' + cls]!r} drawn as the subject {scores[cls + '_class_drift']:.2f}")  # fmt: skip
    print(f"done: {out / 'grid.png'}, LoRA {lora_dir}", flush=True)
    return scores
