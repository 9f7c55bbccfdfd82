import json
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dreambooth.training.loop as train_mod
from dreambooth.config import TrainConfig
from dreambooth.fields import settings
from dreambooth.lora.files import WEIGHT_NAME
from dreambooth.training.setup import set_up


def small(photos, out, **kw) -> TrainConfig:
    base = dict(
        model="tiny",
        instance_dir=str(photos),
        instance_prompt="a photo of sks dog",
        output_dir=str(out),
        with_prior_preservation=True,
        class_prompt="a photo of a dog",
        num_class_images=4,
        class_image_steps=4,
        train_text_encoder=True,
        rank=4,
        learning_rate=1e-3,
        text_encoder_lr=1e-3,
        max_steps=6,
        num_samples=2,
        sample_steps=4,
        seed=3,
    )
    return TrainConfig(**{**base, **kw})


@pytest.mark.slow
def test_train_with_prior_preservation_and_text_encoder_writes_everything(photos, tmp_path):
    out = train_mod.train(small(photos, tmp_path / "run", validation_prompt="a photo of sks dog", validation_steps=3))
    weights = load_file(str(out / WEIGHT_NAME))
    assert any(k.startswith("unet.") for k in weights) and any(k.startswith("text_encoder.") for k in weights)
    assert all(torch.isfinite(v).all() for v in weights.values())
    import yaml

    class_dir = yaml.safe_load((out / "config.yaml").read_text())["class_dir"]
    assert len(list(Path(class_dir).glob("class-*.png"))) == 4
    assert (out / "samples.png").is_file() and (out / "validation" / "step-000006.png").is_file()
    card = (out / "README.md").read_text()
    assert "a photo of sks dog" in card and "prior preservation | yes" in card and "samples.png" in card
    saved = (out / "config.yaml").read_text()
    assert "resolution: 64" in saved and "lora_alpha: 4.0" in saved


@pytest.mark.slow
def test_class_images_already_there_are_kept(photos, tmp_path):
    class_dir = tmp_path / "class"
    class_dir.mkdir()
    from PIL import Image

    Image.new("RGB", (64, 64), "red").save(class_dir / "mine.png")
    train_mod.train(small(photos, tmp_path / "run", class_dir=str(class_dir), max_steps=1, num_samples=0, num_class_images=3))
    names = sorted(p.name for p in class_dir.iterdir())
    assert names == ["class-00000.png", "class-00001.png", "mine.png"]


def test_v_prediction_model_trains(photos, tmp_path):
    out = train_mod.train(
        small(
            photos,
            tmp_path / "run",
            model="tiny-v",
            with_prior_preservation=False,
            train_text_encoder=False,
            max_steps=2,
            num_samples=0,
        )
    )
    assert (out / WEIGHT_NAME).is_file()
    assert "v_prediction" in (out / "README.md").read_text()


@pytest.mark.slow  # seconds of a whole run: the full suite keeps it, the fast lane does not
def test_resume_continues_step_count_and_schedule_bitwise(photos, tmp_path, monkeypatch):
    class_dir = tmp_path / "class"
    kw = dict(
        class_dir=str(class_dir),
        lr_scheduler="linear",
        lr_warmup_steps=2,
        max_steps=6,
        num_samples=0,
        gradient_accumulation_steps=2,
        random_flip=True,
    )
    whole = train_mod.train(small(photos, tmp_path / "whole", **kw))

    real_step_loss = train_mod.step_loss

    def ctrl_c_during_step_5(cfg, family, unet, sched, examples, micro):
        if micro == 2 * 4:  # first micro-step of step 5: steps 1-4 are done
            signal.raise_signal(signal.SIGINT)
        return real_step_loss(cfg, family, unet, sched, examples, micro)

    monkeypatch.setattr(train_mod, "step_loss", ctrl_c_during_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(small(photos, tmp_path / "split", **kw))
    # Ctrl-C lets step 5 finish, then saves it
    state = json.loads((tmp_path / "split" / "checkpoints" / "step-000005" / "state.json").read_text())
    assert state["step"] == 5 and state["lr_scheduler"]["last_epoch"] == 5
    assert not (tmp_path / "split" / WEIGHT_NAME).exists()

    monkeypatch.setattr(train_mod, "step_loss", real_step_loss)
    split = train_mod.train(small(photos, tmp_path / "split", resume=True, **kw))
    a, b = load_file(str(whole / WEIGHT_NAME)), load_file(str(split / WEIGHT_NAME))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    end = json.loads((split / "checkpoints" / "step-000006" / "state.json").read_text())
    assert end["lr_scheduler"]["last_epoch"] == 6
    assert (
        end["lr_scheduler"]["_last_lr"]
        == json.loads((whole / "checkpoints" / "step-000006" / "state.json").read_text())["lr_scheduler"]["_last_lr"]
    )


def test_nan_loss_stops_with_step_and_causes(photos, tmp_path, monkeypatch):
    from dreambooth.errors import TrainingError

    def nan_loss(*a):
        z = torch.tensor(float("nan"), requires_grad=True)
        return z, z, z

    monkeypatch.setattr(train_mod, "step_loss", nan_loss)
    with pytest.raises(TrainingError, match="step 10.*learning rate"):
        train_mod.train(small(photos, tmp_path / "run", with_prior_preservation=False, max_steps=12, num_samples=0))


@pytest.mark.slow
def test_bf16_gradient_checkpointing_and_8bit_adam_fallback_without_bitsandbytes(photos, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` raises ImportError
    out = train_mod.train(
        small(
            photos,
            tmp_path / "run",
            mixed_precision="bf16",
            gradient_checkpointing=True,
            optimizer="adamw8bit",
            with_prior_preservation=False,
            max_steps=2,
            num_samples=0,
        )
    )
    weights = load_file(str(out / WEIGHT_NAME))
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values())
    assert capsys.readouterr().err.count("--optimizer adamw8bit") == 1  # warned once, trained with AdamW


def test_fp16_on_cpu_is_refused_before_loading(photos, tmp_path):
    from dreambooth.errors import UsageError

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA, where fp16 is allowed")
    with pytest.raises(UsageError, match="--mixed-precision fp16"):
        train_mod.train(small(photos, tmp_path / "run", mixed_precision="fp16"))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # seconds of a whole run: the full suite keeps it, the fast lane does not
def test_same_seed_and_config_give_the_same_class_images_lora_and_images(photos, tmp_path):
    from dreambooth.config import GenerateConfig
    from dreambooth.generation import generate

    runs = [
        train_mod.train(
            small(photos, tmp_path / f"run{i}", class_dir=str(tmp_path / f"run{i}" / "class_images"), max_steps=4, num_samples=2)
        )
        for i in range(2)
    ]
    a, b = (load_file(str(r / WEIGHT_NAME)) for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for x, y in zip(*(sorted((r / "class_images").iterdir()) for r in runs)):
        assert x.read_bytes() == y.read_bytes()
    assert (runs[0] / "samples.png").read_bytes() == (runs[1] / "samples.png").read_bytes()
    images = [
        generate(GenerateConfig(lora=str(r), prompt="a photo of sks dog", num_images=2, steps=3, output_dir=str(r / "g")))
        for r in runs
    ]
    assert [p.read_bytes() for p in images[0]] == [p.read_bytes() for p in images[1]]
    other = train_mod.train(small(photos, tmp_path / "other", max_steps=4, num_samples=0, seed=4))
    c = load_file(str(other / WEIGHT_NAME))
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the seed matters


@pytest.mark.slow
def test_base_prediction_prior_needs_no_class_images_and_starts_at_zero_loss(photos, tmp_path):
    import dataclasses

    cfg = small(photos, tmp_path / "run", prior_mode="base-prediction", max_steps=3, num_samples=0)
    out = train_mod.train(cfg)
    assert (out / WEIGHT_NAME).is_file() and not (out / "class_images").exists()
    assert "targets from the base model's own predictions" in (out / "README.md").read_text()

    # Before any step the LoRA is the identity, so the model's class predictions equal the base model's:
    # the class half of the loss is exactly zero while the instance half is not.
    run = set_up(dataclasses.replace(cfg, model="tiny-sdxl", output_dir=str(tmp_path / "sdxl")))
    unet = run.models["unet"]

    def loss():
        return train_mod.step_loss(run.cfg, run.base.family, unet, run.noise_scheduler, run.examples, 0)

    total, instance, prior = loss()
    assert prior.item() < 1e-10 and instance.item() > 0.01  # zero up to float rounding (other batch size)
    # ... and once the LoRA has moved, the class half measures the drift from the base model
    with torch.no_grad():
        for p in unet.parameters():
            if p.requires_grad:
                p.add_(0.05)
    assert loss()[2].item() > 0


@pytest.mark.slow
def test_preserve_unconditional_aims_dropped_class_prompts_at_the_base_model(photos, tmp_path):
    """--preserve-unconditional: a class example whose prompt --class-caption-dropout emptied is judged against the
    base model's own unconditional prediction, not the class image's noise."""

    def class_loss(**kw) -> float:
        cfg = small(photos, tmp_path / "run", class_caption_dropout=1.0, max_steps=1, num_samples=0, **kw)
        run = set_up(cfg)
        unet = run.models["unet"]
        assert run.examples.batch(0).prompts[-1] == ""  # every class prompt dropped
        return train_mod.step_loss(run.cfg, run.base.family, unet, run.noise_scheduler, run.examples, 0)[2].item()

    # before any step the LoRA is the identity: the base model's prediction is the model's, so the class half is zero
    assert class_loss(preserve_unconditional=True) < 1e-10
    assert class_loss() > 0.01  # against the noise, as without the option
    from dreambooth.training.card import prior_words

    cfg = small(photos, tmp_path, class_caption_dropout=0.2, preserve_unconditional=True)
    assert "(0.2 of them with an empty prompt, aimed at the base model's own prediction)" in prior_words(cfg)


@pytest.mark.slow  # seconds of a whole run: the full suite keeps it, the fast lane does not
def test_class_image_bank_is_shared_by_later_runs(photos, tmp_path, monkeypatch):
    import dreambooth.training.class_images as class_images

    drawn = []
    real_draw = class_images.draw_jobs
    monkeypatch.setattr(class_images, "draw_jobs", lambda *a, **k: drawn.append(len(a[1])) or real_draw(*a, **k))
    kw = dict(class_prompt="a photo of a bank dog", max_steps=1, num_samples=0, num_class_images=3)
    train_mod.train(small(photos, tmp_path / "first", **kw))
    assert sum(drawn) == 3
    train_mod.train(small(photos, tmp_path / "second", **kw))  # another run, same class settings: nothing drawn
    assert sum(drawn) == 3
    train_mod.train(small(photos, tmp_path / "third", **{**kw, "num_class_images": 4}))  # one more image only
    assert sum(drawn) == 4
    train_mod.train(small(photos, tmp_path / "fourth", **{**kw, "seed": 9}))  # other seed, other images
    assert sum(drawn) == 7


@pytest.mark.slow  # seconds of a whole run: the full suite keeps it, the fast lane does not
def test_events_and_stop_from_another_thread(photos, tmp_path):
    import threading

    events, stop = [], threading.Event()

    def listen(event):
        events.append(event)
        if event["kind"] == "step" and event["step"] == 3:
            stop.set()  # a UI's Stop button

    cfg = small(
        photos,
        tmp_path / "run",
        with_prior_preservation=False,
        max_steps=8,
        num_samples=0,
        validation_prompt="a photo of sks dog",
        validation_steps=2,
    )
    worker_error = []
    thread = threading.Thread(
        target=lambda: worker_error.append(pytest.raises(KeyboardInterrupt, train_mod.train, cfg, listen, stop))
    )
    thread.start()
    thread.join(120)
    assert [e["step"] for e in events if e["kind"] == "step"] == [1, 2, 3]
    assert [e["step"] for e in events if e["kind"] == "validation"] == [2]
    assert (tmp_path / "run" / "checkpoints" / "step-000003").is_dir()
    events.clear()
    out = train_mod.train(dataclasses_replace(cfg, resume=True), events.append)
    assert [e["step"] for e in events if e["kind"] == "step"] == [4, 5, 6, 7, 8] and events[-1] == {
        "kind": "done",
        "path": str(out),
    }


def dataclasses_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


# The first three steps' (total, instance, prior) losses of the tiny models for seed 0. Measured with the training
# loop as it was before base families became plug-ins and again after: equal to the 8 digits printed. A change in
# the wiring of a step (which latents, noise, timesteps, prompts, targets or weights meet) moves them.
PINNED = {
    "tiny": ([1.12499559, 1.12499559, 0.0], [1.10407114, 1.10269094, 0.00138026], [1.11543751, 1.1141659, 0.00127157]),
    "tiny-v": ([0.14201558, 0.14201558, 0.0], [0.53924549, 0.53924549, 0.0], [0.5695523, 0.5695523, 0.0]),
    "tiny-sdxl": ([1.12374711, 1.12374711, 0.0], [1.12421477, 1.12421477, 0.0], [1.11073017, 1.11073017, 0.0]),
    # measured when the flow families were added (2026-11-29)
    "tiny-flux": ([1.54913831, 1.54913831, 0.0], [1.52357829, 1.52356112, 1.712e-05], [1.52485287, 1.52478707, 6.576e-05]),
    "tiny-sd3": ([3.90423489, 3.90423489, 0.0], [4.92200947, 4.92200947, 0.0], [2.88191962, 2.88191962, 0.0]),
    # measured when Qwen-Image was added (2026-11-30)
    "tiny-qwen-image": ([1.81495726, 1.81495726, 0.0], [1.83031166, 1.83025682, 5.484e-05], [1.8156451, 1.81552386, 0.00012123]),
    # measured when Z-Image was added (2026-11-30)
    "tiny-z-image": ([1.45947587, 1.45947587, 0.0], [1.45695865, 1.44842982, 0.00852882], [1.46577299, 1.45784605, 0.00792696]),
    # measured when FLUX.2 [klein] was added (2026-11-30)
    "tiny-flux2-klein": ([2.54864812, 2.54864812, 0.0], [2.54920936, 2.54920864, 7.8e-07], [2.52768421, 2.52768135, 2.83e-06]),
}
PINNED_SETTINGS = {  # epsilon with base-prediction prior; v with min-SNR weights; SDXL with both text encoders' LoRA
    "tiny": dict(with_prior_preservation=True, class_prompt="a photo of a dog", prior_mode="base-prediction"),
    "tiny-v": dict(snr_gamma=5.0),
    "tiny-sdxl": dict(train_text_encoder=True),
    # FLUX.1: logit-normal levels, base-prediction prior, CLIP LoRA (T5 cached); SD3: cosmap weights, both CLIPs' LoRA
    "tiny-flux": dict(
        with_prior_preservation=True,
        class_prompt="a photo of a dog",
        prior_mode="base-prediction",
        train_text_encoder=True,
        weighting_scheme="logit_normal",
    ),  # fmt: skip
    "tiny-sd3": dict(train_text_encoder=True, weighting_scheme="cosmap"),
    # Qwen-Image: logit-normal levels, base-prediction prior, Qwen2.5-VL cached (never trained)
    "tiny-qwen-image": dict(
        with_prior_preservation=True,
        class_prompt="a photo of a dog",
        prior_mode="base-prediction",
        weighting_scheme="logit_normal",
    ),
    # Z-Image: its negated, time-reversed transformer under the flow objective, base-prediction prior, Qwen3 cached
    "tiny-z-image": dict(
        with_prior_preservation=True,
        class_prompt="a photo of a dog",
        prior_mode="base-prediction",
        weighting_scheme="logit_normal",
    ),
    # FLUX.2 [klein]: latents by the VAE's patch statistics, three Qwen3 layers (cached), mode-weighted levels
    "tiny-flux2-klein": dict(
        with_prior_preservation=True,
        class_prompt="a photo of a dog",
        prior_mode="base-prediction",
        weighting_scheme="mode",
    ),
}


@pytest.mark.parametrize("model", list(PINNED))
def test_first_steps_losses_are_pinned(model, tmp_path):
    from conftest import SAMPLE

    run = set_up(
        settings(
            TrainConfig,
            model=model,
            instance_dir=str(SAMPLE),
            instance_prompt="a photo of sks dog",
            output_dir=str(tmp_path / "run"),
            rank=4,
            max_steps=3,
            num_samples=0,
            seed=0,
            batch_size=2,
            learning_rate=1e-2,
            **PINNED_SETTINGS[model],
        )
    )
    denoiser = run.models[run.base.family.denoiser]
    for step, expected in enumerate(PINNED[model]):
        with torch.no_grad():  # the step's losses, read before the step updates the weights
            losses = train_mod.step_loss(run.cfg, run.base.family, denoiser, run.noise_scheduler, run.examples, step)
        assert [x.item() for x in losses] == pytest.approx(expected, rel=1e-4, abs=1e-6), step
        assert train_mod.optimizer_step(run, step).item() == pytest.approx(expected[0], rel=1e-4)


@pytest.mark.slow
def test_a_vae_that_must_run_in_fp32_runs_in_fp32_through_a_bf16_run(photos, tmp_path, monkeypatch):
    """Photos encoded under the training step's autocast, validation images decoded under the sampling autocast:
    the VAE's convolutions see fp32 in both."""
    from vae_dtypes import watch_vae

    from dreambooth.training import setup

    pipes = []

    def load_and_watch(model, **kw):
        pipe = load_pipeline(model, **kw)
        pipe.vae.register_to_config(force_upcast=True)  # as SDXL's own VAE asks
        pipes.append((pipe, watch_vae(pipe.vae)))
        return pipe

    load_pipeline = setup.load_pipeline
    monkeypatch.setattr(setup, "load_pipeline", load_and_watch)
    out = train_mod.train(
        small(
            photos,
            tmp_path / "run",
            model="tiny-sdxl",
            mixed_precision="bf16",
            with_prior_preservation=False,
            train_text_encoder=False,
            max_steps=1,
            num_samples=1,
            sample_steps=2,
        )
    )
    [(pipe, seen)] = pipes
    assert pipe.vae.dtype == torch.float32
    assert seen == {"encoder": {torch.float32}, "decoder": {torch.float32}}
    assert (out / "samples.png").is_file()


@pytest.mark.slow  # seconds of whole runs: the full suite keeps it, the fast lane does not
def test_a_finished_run_lets_its_models_go_without_the_garbage_collector(photos, tmp_path, monkeypatch):
    """accelerate's mixed-precision forward is stored on each model (a reference cycle): a second run in the same
    process must not start with the first one's models still held, waiting for a collection."""
    import gc
    import weakref

    import dreambooth.training.setup as setup_mod

    held, load = [], setup_mod.load_pipeline

    def remembering(*args, **kw):
        pipe = load(*args, **kw)
        held.extend(weakref.ref(m) for m in (pipe.unet, pipe.text_encoder, pipe.vae))
        return pipe

    # The libraries' first imports can log a caught error, whose traceback (kept by pytest's log capture) holds every
    # frame up the stack: import them before the runs watched.
    load("tiny")
    monkeypatch.setattr(setup_mod, "load_pipeline", remembering)
    gc.collect()
    gc.disable()
    try:
        for i in range(2):
            train_mod.train(small(photos, tmp_path / f"run{i}", mixed_precision="bf16", max_steps=1, num_samples=0,
                                  with_prior_preservation=False))  # fmt: skip
            assert [ref() is None for ref in held] == [True] * len(held)
    finally:
        gc.enable()


@pytest.mark.parametrize("model", ["tiny", *(pytest.param(m, marks=pytest.mark.slow) for m in list(PINNED)[1:])])
def test_masks_of_zeros_leave_no_instance_loss_and_a_background_weight_of_one_changes_nothing(model, tmp_path, capsys):
    import dataclasses
    import shutil

    from conftest import SAMPLE
    from PIL import Image

    photos = shutil.copytree(SAMPLE, tmp_path / "photos")
    for photo in sorted(photos.glob("*.jpg"))[1:]:  # the first photo has no mask: it counts as all subject
        with Image.open(photo) as im:
            Image.new("L", im.size, 0).save(photo.with_name(photo.stem + ".mask.png"))
    cfg = settings(TrainConfig, model=model, instance_dir=str(photos), instance_prompt="a photo of sks dog",
                   output_dir=str(tmp_path / "run"), rank=4, max_steps=3, num_samples=0, seed=0, batch_size=2,
                   learning_rate=1e-2, masked_loss=True, mask_background_weight=0.0, **PINNED_SETTINGS[model])  # fmt: skip
    run = set_up(cfg)
    assert "no mask for 00.jpg" in capsys.readouterr().err
    denoiser = run.models[run.base.family.denoiser]
    whole = dataclasses.replace(run.cfg, mask_background_weight=1.0)
    for step in range(3):
        with torch.no_grad():
            masked = train_mod.step_loss(run.cfg, run.base.family, denoiser, run.noise_scheduler, run.examples, step)
            unmasked = train_mod.step_loss(whole, run.base.family, denoiser, run.noise_scheduler, run.examples, step)
        assert [x.item() for x in unmasked] == pytest.approx(PINNED[model][step], rel=1e-4, abs=1e-6), step
        photos_seen = stream_positions(step)
        if 0 not in photos_seen:  # only masked photos in this batch
            assert masked[1].item() == 0.0, step
        else:
            assert 0 < masked[1].item() < unmasked[1].item(), step
        train_mod.optimizer_step(dataclasses.replace(run, cfg=whole), step)  # trained as the pinned run was


def stream_positions(step: int, batch_size: int = 2) -> list[int]:
    from dreambooth.training.batches import stream_indices

    return stream_indices(step * batch_size, batch_size, 5, seed=0)
