"""The FLUX.1 path end to end on the tiny FLUX model: train -> plain diffusers -> generate; resume; T5 cached."""

import signal

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from safetensors.torch import load_file

import dreambooth.training.loop as train_mod
from dreambooth.config import GenerateConfig, TrainConfig
from dreambooth.errors import UsageError
from dreambooth.families.flux import build_tiny as build_tiny_flux
from dreambooth.families.flux import pack, unpack
from dreambooth.families.sd import build_tiny as build_tiny_sd
from dreambooth.fields import settings
from dreambooth.generation import generate
from dreambooth.lora.files import WEIGHT_NAME, load_lora
from dreambooth.models import describe


def flux_run(photos, out, **kw) -> TrainConfig:
    base = dict(model="tiny-flux", instance_dir=str(photos), instance_prompt="a photo of sks dog", output_dir=str(out),
                with_prior_preservation=True, class_prompt="a photo of a dog", num_class_images=2, class_image_steps=2,
                train_text_encoder=True, rank=4, learning_rate=1e-2, text_encoder_lr=1e-2, max_steps=4, num_samples=0,
                seed=1)  # fmt: skip
    return settings(TrainConfig, **{**base, **kw})


@pytest.fixture(scope="module")
def flux_lora(tmp_path_factory):
    from conftest import SAMPLE

    out = tmp_path_factory.mktemp("flux") / "run"
    return train_mod.train(flux_run(SAMPLE, out, max_steps=6, num_samples=1, sample_steps=2, weighting_scheme="logit_normal"))


def draw(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe("a photo of sks dog", height=64, width=64, num_inference_steps=3, guidance_scale=3.5,
                generator=torch.Generator().manual_seed(0), output_type="np", max_sequence_length=32).images[0]  # fmt: skip


def every_adapter_was_read(model) -> bool:
    """A module the file held no weights for keeps peft's initial all-zero up (B) matrix."""
    ups = [p for name, p in model.named_parameters() if "lora_B" in name]
    return bool(ups) and all(p.abs().sum() > 0 for p in ups)


def test_tiny_flux_is_described_as_flux_dev():
    info = describe(build_tiny_flux(), "tiny-flux")
    assert (info.family.name, info.version, info.prediction_type) == ("flux", "tiny-flux", "flow (velocity)")
    assert describe(build_tiny_flux()).version == "flux1-dev"  # guidance-distilled: [dev]


def test_packing_is_undone_exactly():
    latents = torch.randn(2, 16, 8, 6)
    tokens = pack(latents)
    assert tokens.shape == (2, 4 * 3, 64)
    assert torch.equal(unpack(tokens, 8, 6), latents)


def test_flux_lora_loads_in_plain_diffusers_and_changes_the_image(flux_lora, tmp_path):
    folder = tmp_path / "base"
    build_tiny_flux().save_pretrained(folder)
    pipe = FluxPipeline.from_pretrained(folder)
    before = draw(pipe)
    pipe.load_lora_weights(flux_lora)
    assert pipe.transformer.peft_config and pipe.text_encoder.peft_config
    assert every_adapter_was_read(pipe.transformer) and every_adapter_was_read(pipe.text_encoder)
    assert not getattr(pipe.text_encoder_2, "peft_config", None)  # T5 is never trained
    assert np.abs(draw(pipe) - before).mean() > 1e-3
    card = (flux_lora / "README.md").read_text()
    assert (flux_lora / "samples.png").is_file() and "FluxPipeline" in card


def test_generate_draws_with_the_flux_base_it_was_trained_on(flux_lora, tmp_path):
    paths = generate(GenerateConfig(lora=str(flux_lora), prompt="a photo of sks dog in the snow", num_images=1, steps=2,
                                    output_dir=str(tmp_path / "g")))  # fmt: skip
    assert len(paths) == 1 and "model: tiny-flux" in (tmp_path / "g" / "config.yaml").read_text()


def test_an_sd_lora_on_a_flux_base_is_one_line(flux_lora, photos, tmp_path):
    sd = train_mod.train(TrainConfig(model="tiny", instance_dir=str(photos), instance_prompt="a photo of sks dog",
                                     output_dir=str(tmp_path / "sd"), rank=2, max_steps=1, num_samples=0))  # fmt: skip
    with pytest.raises(UsageError) as err:
        load_lora(build_tiny_flux(), sd, model="tiny-flux")
    assert "\n" not in str(err.value) and "made for tiny" in str(err.value)
    with pytest.raises(UsageError, match="made for tiny-flux"):
        load_lora(build_tiny_sd(), flux_lora, model="tiny")


@pytest.mark.slow  # seconds of whole runs: the full suite keeps it, the fast lane does not
def test_t5_runs_once_per_prompt_even_when_the_clip_encoder_trains(photos, tmp_path, monkeypatch):
    import dreambooth.training.setup as setup_mod

    calls, load = [], setup_mod.load_pipeline

    def counting(*args, **kw):
        pipe = load(*args, **kw)
        pipe.text_encoder_2.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
        return pipe

    monkeypatch.setattr(setup_mod, "load_pipeline", counting)
    seen = []
    for steps in (2, 5):
        calls.clear()
        train_mod.train(flux_run(photos, tmp_path / f"run{steps}", prior_mode="base-prediction", max_steps=steps))
        seen.append(sum(calls))
    # the prompts T5 encoded, whatever the number of steps: the instance and class prompts, and the class prompt
    # once more for the base model's view (CLIP with its adapter off), where the cache is filled
    assert seen == [3, 3]


def interrupted_then_resumed_equals_whole(run, photos, tmp_path, monkeypatch, **kw):
    """Ctrl-C in step 3 of a 4-step run, then --resume: the LoRA equals an uninterrupted run's, bitwise. `run` makes
    the family's TrainConfig."""
    kw = dict(max_steps=4, class_dir=str(tmp_path / "class"), **kw)
    whole = train_mod.train(run(photos, tmp_path / "whole", **kw))
    real = train_mod.step_loss

    def ctrl_c_in_step_3(cfg, family, denoiser, sched, examples, micro):
        if micro == 2:
            signal.raise_signal(signal.SIGINT)
        return real(cfg, family, denoiser, sched, examples, micro)

    monkeypatch.setattr(train_mod, "step_loss", ctrl_c_in_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(run(photos, tmp_path / "split", **kw))
    monkeypatch.setattr(train_mod, "step_loss", real)
    split = train_mod.train(run(photos, tmp_path / "split", resume=True, **kw))
    a, b = load_file(str(whole / WEIGHT_NAME)), load_file(str(split / WEIGHT_NAME))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # seconds of a whole run: the full suite keeps it, the fast lane does not
def test_resume_after_ctrl_c_equals_an_uninterrupted_run(photos, tmp_path, monkeypatch):
    interrupted_then_resumed_equals_whole(flux_run, photos, tmp_path, monkeypatch)


def test_resolution_must_fit_the_packed_latents(photos, tmp_path):
    with pytest.raises(UsageError, match="--resolution 72: FLUX.1 needs a multiple of 16"):
        train_mod.train(flux_run(photos, tmp_path / "run", resolution=72, with_prior_preservation=False))


def test_prompt_embeddings_are_the_pipelines_own():
    from dreambooth.families.flux import FAMILY

    pipe = build_tiny_flux()
    pipe.tokenizer_2.model_max_length = 32
    prompts = ["a photo of sks dog", "a photo of a dog in the snow"]
    with torch.no_grad():
        ours = FAMILY.encode_prompts([pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2], prompts, "cpu")
        hidden, pooled, _ = pipe.encode_prompt(prompts, None, max_sequence_length=32)
    assert torch.allclose(ours["hidden"], hidden, atol=1e-6) and torch.allclose(ours["pooled"], pooled, atol=1e-6)
