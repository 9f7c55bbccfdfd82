"""Validation that picks the checkpoint: the held-out loss, the scores of the validation prompts, --keep-best."""

import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save

import dreambooth
import dreambooth.training.loop as train_mod
from dreambooth.config import TrainConfig, check_train
from dreambooth.errors import UsageError
from dreambooth.lora.files import WEIGHT_NAME
from dreambooth.training import validation


def small(photos, out, **kw) -> TrainConfig:
    base = dict(
        model="tiny",
        instance_dir=str(photos),
        instance_prompt="a photo of sks dog",
        output_dir=str(out),
        rank=4,
        learning_rate=1e-2,
        max_steps=4,
        num_samples=0,
        sample_steps=2,
        num_validation_images=1,
        validation_steps=2,
        seed=3,
    )
    return TrainConfig(**{**base, **kw})


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # three short runs, class images drawn
def test_the_validation_loss_is_written_each_time_and_leaves_training_as_it_was(photos, tmp_path):
    validated = train_mod.train(
        small(
            photos,
            tmp_path / "validated",
            validation_loss=True,
            with_prior_preservation=True,
            class_prompt="a photo of a dog",
            num_class_images=2,
            class_image_steps=2,
            class_dir=str(tmp_path / "class"),
        )  # fmt: skip
    )
    again = train_mod.train(small(photos, tmp_path / "again", with_prior_preservation=True, class_prompt="a photo of a dog",
                                  num_class_images=2, class_image_steps=2, class_dir=str(tmp_path / "class")))  # fmt: skip
    a, b = load_file(str(again / WEIGHT_NAME)), load_file(str(validated / WEIGHT_NAME))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the training stream drew what it draws without validation
    table = rows(validated / "validation" / "loss.csv")
    assert [r["step"] for r in table] == ["0", "2", "4"]
    instance = [float(r["instance_loss"]) for r in table]
    assert all(float(r["class_loss"]) > 0 for r in table)
    assert instance[-1] < instance[0]  # at lr 1e-2 four steps fit the photos
    assert Image.open(validated / "validation" / "loss.png").size == (640, 360)
    card = (validated / "README.md").read_text()
    assert "validation/loss.png" in card


def test_the_held_examples_give_the_same_loss_every_time(photos, tmp_path):
    from dreambooth.training.setup import set_up

    run = set_up(small(photos, tmp_path / "run", validation_loss=True))
    first = validation.validation_loss(run)
    run.validation.pop("held")  # made anew from the seed: the same noise and timesteps
    assert validation.validation_loss(run) == first and set(first) == {"instance_loss"}


@pytest.mark.slow  # three short runs
def test_keep_best_makes_the_best_scoring_steps_weights_the_lora(photos, tmp_path, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# the subject\na photo of sks dog\n\na photo of sks dog on the beach\n")
    calls = []

    def scores(run, images, step):  # step 4 scores best
        calls.append((step, sorted(images)))
        return {"dino": {2: 0.3, 4: 0.9, 6: 0.5}[step]}

    monkeypatch.setattr(validation, "score_checkpoint", scores)
    # what a run killed before its first checkpoint left: a new run there starts afresh, not from its kept step
    stale = tmp_path / "kept" / "validation" / validation.BEST
    stale.parent.mkdir(parents=True)
    stale.write_bytes(save({"w": torch.zeros(1)}, {"kept": json.dumps({"step": 1, "metric": "dino", "value": 5.0})}))
    kept = dreambooth.train(  # the API hands train its scorer; score_checkpoint, above, stands in for it
        small(photos, tmp_path / "kept", max_steps=6, validation_prompts=str(prompts), keep_best="dino", dino_model="dino")
    )
    at_4 = train_mod.train(small(photos, tmp_path / "four", max_steps=4))
    at_6 = train_mod.train(small(photos, tmp_path / "six", max_steps=6))
    a, b, c = (load_file(str(p / WEIGHT_NAME)) for p in (kept, at_4, at_6))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert calls == [(s, ["a photo of sks dog", "a photo of sks dog on the beach"]) for s in (2, 4, 6)]
    assert [(r["step"], r["dino"]) for r in rows(kept / "validation" / "scores.csv")] == [
        ("2", "0.3"),
        ("4", "0.9"),
        ("6", "0.5"),
    ]
    card = (kept / "README.md").read_text()
    assert "weights of step 4 of 6" in card and "highest dino (0.9000)" in card
    assert Image.open(kept / "validation" / "prompts-step-000004.png").size == (64, 128)  # a row of 1 image per prompt
    # the last checkpoint still holds the last weights, which a resumed run continues from
    state = load_file(str(kept / "checkpoints" / "step-000006" / "state.safetensors"))
    last = load_file(str(at_6 / "checkpoints" / "step-000006" / "state.safetensors"))
    assert all(torch.equal(state[k], last[k]) for k in last if k.startswith("param."))


def test_lower_is_better_for_class_drift():
    assert validation.better("class_drift", 0.1, 0.2) and not validation.better("class_drift", 0.3, 0.2)
    assert validation.better("subject_in_context", 0.3, 0.2) and validation.better("dino", 0.1, None)


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(keep_best="dino"), "needs --validation-prompts"),
        (dict(keep_best="sharpness", validation_prompts="p.txt"), "choose from"),
        (dict(keep_best="subject_in_context", validation_prompts="p.txt"), "only --model world"),
        (dict(keep_best="clip_t", validation_prompts="p.txt"), "needs --clip-model"),
        (dict(keep_best="dino", validation_prompts="p.txt", dino_model="d", ema_decay=0.9, use_ema_weights=True), "choose one"),
    ],
)
def test_keep_best_settings_that_cannot_work_are_one_line(kw, words, tmp_path):
    cfg = TrainConfig(instance_dir="x", instance_prompt="a photo of sks dog", output_dir=str(tmp_path), **kw)
    with pytest.raises(UsageError, match=words):
        check_train(cfg)


def test_an_empty_prompt_file_is_refused_before_anything_is_written(photos, tmp_path):
    empty = tmp_path / "prompts.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(UsageError, match="prompts.txt: holds no prompt"):
        dreambooth.train(small(photos, tmp_path / "run", validation_prompts=str(empty)))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_bucketed_flux_run_with_photos_of_two_shapes_trains_and_validates(photos, tmp_path):
    shaped = tmp_path / "shaped"
    shaped.mkdir()
    for i, p in enumerate(sorted(photos.glob("*.jpg"))):
        image = Image.open(p)
        box = (0, 0, 192, 96) if i % 2 else (0, 0, 96, 192)  # wide and tall crops of each photo
        image.crop(box).save(shaped / f"{i}.png")
    out = train_mod.train(
        small(
            shaped,
            tmp_path / "run",
            model="tiny-flux",
            bucketing=True,
            batch_size=2,
            validation_loss=True,
            max_sequence_length=16,
        )  # fmt: skip
    )
    assert all(torch.isfinite(v).all() for v in load_file(str(out / WEIGHT_NAME)).values())
    assert len(rows(out / "validation" / "loss.csv")) == 3


def fake_run(cfg, out, photos=()):
    from types import SimpleNamespace

    from dreambooth.evaluation.validation_scores import validation_scorer

    examples = SimpleNamespace(sets={"instance": list(photos)})
    return SimpleNamespace(cfg=cfg, out=out, validation={"score": validation_scorer(cfg)}, examples=examples)


def test_the_worlds_reader_scores_the_samples_of_each_prompt(tmp_path):
    from dreambooth.world.demo import write_photos
    from dreambooth.world.render import render, subject_scenes

    cfg = TrainConfig(model="world", instance_prompt="a photo of zwx cat", class_prompt="a photo of a cat")
    subject = [Image.open(p) for p in sorted(write_photos("cat", tmp_path / "cat").glob("cat-?.png"))]
    dogs = [Image.fromarray(render(scene)) for scene in subject_scenes("dog", 4, 0)]
    images = {"a photo of zwx cat": subject, "a photo of a cat": subject[:2] + dogs[:2], "a photo of a teapot": dogs}
    scores = validation.score_checkpoint(fake_run(cfg, tmp_path), images, 10)
    assert scores["subject_fidelity"] == 1.0
    assert scores["class_fidelity"] == 0.5 and scores["class_drift"] == 0.5
    assert "subject_in_context" not in scores  # no prompt asked for a context


@pytest.mark.slow  # loads the scoring models
def test_dino_and_clip_scores_are_what_dreambooth_evaluate_gives(tmp_path):
    from scoring_models import build_scoring_models, noise_image

    from dreambooth.config import EvaluateConfig
    from dreambooth.evaluation.evaluate import evaluate
    from dreambooth.training.photos import load_folder

    models = build_scoring_models(tmp_path / "scorers")
    for i in range(3):
        noise_image(tmp_path / "real" / f"{i}.png", i)
    cfg = TrainConfig(instance_prompt="a photo of sks dog", dino_model=models["dino_model"], clip_model=models["clip_model"])
    run = fake_run(cfg, tmp_path / "run", load_folder(tmp_path / "real"))
    images = {p: [Image.open(noise_image(tmp_path / "drawn" / f"{p}-{i}.png", 10 + i)) for i in range(2)]
              for p in ("a photo of sks dog", "a photo of sks dog on the beach")}  # fmt: skip
    scores = validation.score_checkpoint(run, images, 2)
    folder = tmp_path / "run" / "validation" / "samples-step-000002"
    prompts = {str(p.relative_to(folder)): p.parent.name.replace("-", " ") for p in folder.rglob("*.png")}
    (tmp_path / "prompts.json").write_text(__import__("json").dumps(prompts))
    reference = evaluate(EvaluateConfig(real=str(tmp_path / "real"), generated=str(folder), prompts=str(tmp_path / "prompts.json"),
                                        identifier="sks", output=str(tmp_path / "scores.json"), metrics=["dino", "clip-i", "clip-t"],
                                        cache=False, **{k: v for k, v in models.items() if k != "lpips_net"}))  # fmt: skip
    assert set(scores) == {"dino", "clip_i", "clip_t"}
    assert scores == {k: round(reference["means"][k], 4) for k in scores}


def test_validation_prompts_without_a_scorer_are_refused_before_training(photos, tmp_path):
    """training/ scores with what its caller hands in (evaluation.validation_scores); without it, no run starts."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of sks dog\n")
    with pytest.raises(UsageError, match="given no scorer"):
        train_mod.train(small(photos, tmp_path / "run", validation_prompts=str(prompts)))
    assert not (tmp_path / "run").exists()
