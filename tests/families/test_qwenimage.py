"""The Qwen-Image path end to end on the tiny Qwen-Image model: train -> plain diffusers -> generate; resume; the
Qwen2.5-VL prompt embeddings cached; the video VAE's conventions."""

import numpy as np
import pytest
import torch
from diffusers import QwenImagePipeline
from test_flux import every_adapter_was_read, interrupted_then_resumed_equals_whole

import dreambooth.training.loop as train_mod
from dreambooth.config import GenerateConfig, TrainConfig
from dreambooth.errors import UsageError
from dreambooth.families.qwenimage import FAMILY, PROMPT_TEMPLATE, TEMPLATE_TOKENS, pack, unpack
from dreambooth.families.qwenimage import build_tiny as build_tiny_qwen_image
from dreambooth.families.sd import build_tiny as build_tiny_sd
from dreambooth.fields import settings
from dreambooth.generation import generate
from dreambooth.lora.files import WEIGHT_NAME, load_lora
from dreambooth.models import describe
from dreambooth.sampling import draw


def qwen_image_run(photos, out, **kw) -> TrainConfig:
    base = dict(model="tiny-qwen-image", instance_dir=str(photos), instance_prompt="a photo of sks dog",
                output_dir=str(out), with_prior_preservation=True, class_prompt="a photo of a dog", num_class_images=2,
                class_image_steps=2, rank=4, learning_rate=1e-2, max_steps=4, num_samples=0, seed=1)  # fmt: skip
    return settings(TrainConfig, **{**base, **kw})


@pytest.fixture(scope="module")
def qwen_image_lora(tmp_path_factory):
    from conftest import SAMPLE

    out = tmp_path_factory.mktemp("qwen-image") / "run"
    return train_mod.train(qwen_image_run(SAMPLE, out, max_steps=6, num_samples=1, sample_steps=2))


def pipeline_image(pipe, **kw):
    pipe.set_progress_bar_config(disable=True)
    return pipe("a photo of sks dog", height=64, width=64, num_inference_steps=3, negative_prompt=" ",
                true_cfg_scale=4.0, generator=torch.Generator().manual_seed(0), **{"output_type": "np", **kw}).images[0]  # fmt: skip


def test_tiny_qwen_image_is_described_as_qwen_image():
    info = describe(build_tiny_qwen_image(), "tiny-qwen-image")
    assert (info.family.name, info.version, info.prediction_type) == ("qwen-image", "tiny-qwen-image", "flow (velocity)")
    assert info.native_resolution == 64 and describe(build_tiny_qwen_image()).version == ""  # not the released shape


def test_packing_is_undone_exactly():
    latents = torch.randn(2, 16, 8, 6)
    tokens = pack(latents)
    assert tokens.shape == (2, 4 * 3, 64)
    assert torch.equal(unpack(tokens, 8, 6), latents)


def test_prompt_embeddings_are_the_pipelines_own():
    pipe = build_tiny_qwen_image()
    pipe.tokenizer.model_max_length = 24  # --max-sequence-length
    prompts = ["a photo of sks dog", "a photo of a dog in the snow"]
    with torch.no_grad():
        ours = FAMILY.encode_prompts([pipe.tokenizer], [pipe.text_encoder], prompts, "cpu")
        hidden, mask = pipe.encode_prompt(prompts, "cpu", max_sequence_length=24)
    tokens = hidden.shape[1]
    assert ours["hidden"].shape == (2, 24, 32) and tokens < 24
    assert torch.allclose(ours["hidden"][:, :tokens], hidden, atol=1e-6)
    assert torch.equal(ours["mask"][:, :tokens], mask) and not ours["mask"][:, tokens:].any()
    assert not ours["hidden"][:, tokens:].any()
    # one prompt alone: as in a batch (each prompt's embedding is cached alone)
    with torch.no_grad():
        alone = FAMILY.encode_prompts([pipe.tokenizer], [pipe.text_encoder], prompts[:1], "cpu")
    assert torch.allclose(alone["hidden"], ours["hidden"][:1], atol=1e-6) and torch.equal(alone["mask"], ours["mask"][:1])


def test_the_pipeline_drops_exactly_the_template_of_the_tiny_tokenizer():
    """The tiny tokenizer opens the template with the 34 tokens the pipeline drops, as Qwen2.5's does: what is left
    starts with the prompt."""
    tokenizer = build_tiny_qwen_image().tokenizer
    ids = tokenizer(PROMPT_TEMPLATE.format("a photo of sks dog")).input_ids
    assert ids[TEMPLATE_TOKENS : TEMPLATE_TOKENS + 5] == tokenizer("a photo of sks dog").input_ids


def test_the_identifier_is_read_as_the_prompt_reads_it(capsys):
    """`dreambooth identifier --model tiny-qwen-image` and the run's check read the model's own tokenizer, and a word
    as it stands in a prompt, after a space: byte-level BPE tokenizes " sks" (one token here) and "sks" apart."""
    from dreambooth.models import load_tokenizer
    from dreambooth.training.identifier import check_identifier, tokenise

    tokenizer = load_tokenizer("tiny-qwen-image")
    in_prompt = tokenizer(" sks").input_ids
    assert len(in_prompt) == 1 and tokenise(tokenizer, "sks dog", in_prompt=True)[0] == ("sks", [("sks", in_prompt[0])])
    check_identifier(tokenizer, "a photo of sks dog", "a photo of a dog")
    assert "splits into" not in capsys.readouterr().err


def test_drawing_gives_the_pipelines_own_image():
    """sampling.draw stops at the latents and decodes them through the family (unpacked, de-normalised, one frame)
    with true classifier-free guidance: the image the pipeline makes by itself."""
    pipe = build_tiny_qwen_image()
    ours = np.asarray(draw(pipe, "a photo of sks dog", 1, seed=0, steps=3, guidance=4.0, resolution=64)[0])
    # the random tiny model barely reads its prompt: without guidance 5 % of the pixel values differ, by 1. Sums taken
    # in another order (one thread or two) round single values the other way: measured, 1 of 12,288 at one thread.
    differ = np.abs(ours.astype(int) - np.asarray(pipeline_image(pipe, output_type="pil")).astype(int))
    assert differ.max() <= 1 and (differ > 0).mean() < 0.001


def test_the_video_vae_round_trip_is_the_pipelines():
    """Latents normalised as training sees them, decoded as sampling does: the pipeline's own de-normalisation."""
    vae = build_tiny_qwen_image().vae
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        posterior = FAMILY.encode_images(vae, pixels)
        assert posterior.mean.shape == (1, 16, 32, 32)
        latents = FAMILY.normalised_latents(vae, posterior.mean)
        mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1)
        assert torch.allclose(latents, (posterior.mean - mean) / std)
        direct = vae.decode(posterior.mean[:, :, None], return_dict=False)[0][:, :, 0]
        assert torch.allclose(FAMILY.decoded_latents(vae, latents), direct, atol=1e-5)


def test_every_adapted_module_gets_a_gradient():
    """Data-parallel training stops at a parameter without a gradient: the last block's text-only modules, which
    the image never reads, get no adapter."""
    from dreambooth.lora.adapter import add_lora

    pipe = build_tiny_qwen_image()
    transformer = pipe.transformer
    unread = FAMILY.unread_modules("transformer", transformer)
    params = add_lora(transformer, 2, 2.0, 0.0, ["all-linear"], unread, False)
    for p in params:  # peft starts B at zero: no gradient would reach A
        torch.nn.init.normal_(p)
    prompts = {"hidden": torch.randn(2, 8, 32), "mask": torch.tensor([[1] * 8, [1] * 5 + [0] * 3])}
    out = FAMILY.denoise(transformer, torch.randn(2, 16, 8, 8), torch.tensor([300.0, 700.0]), prompts, torch.zeros(2, 6))
    out.square().mean().backward()
    assert params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    adapted = {n for n, _ in transformer.named_parameters() if "lora_A" in n}
    assert not any("transformer_blocks.1.txt_mlp" in n for n in adapted)
    assert any("transformer_blocks.0.txt_mlp" in n for n in adapted)


def test_qwen_image_lora_loads_in_plain_diffusers_and_changes_the_image(qwen_image_lora, tmp_path):
    folder = tmp_path / "base"
    build_tiny_qwen_image().save_pretrained(folder)
    pipe = QwenImagePipeline.from_pretrained(folder)
    before = pipeline_image(pipe)
    pipe.load_lora_weights(qwen_image_lora)
    assert pipe.transformer.peft_config and every_adapter_was_read(pipe.transformer)
    assert not getattr(pipe.text_encoder, "peft_config", None)  # Qwen2.5-VL is never trained
    assert np.abs(pipeline_image(pipe) - before).mean() > 1e-3
    card = (qwen_image_lora / "README.md").read_text()
    assert (qwen_image_lora / "samples.png").is_file() and "QwenImagePipeline" in card


def test_generate_draws_with_the_qwen_image_base_it_was_trained_on(qwen_image_lora, tmp_path):
    paths = generate(GenerateConfig(lora=str(qwen_image_lora), prompt="a photo of sks dog in the snow", num_images=1,
                                    steps=2, output_dir=str(tmp_path / "g")))  # fmt: skip
    assert len(paths) == 1 and "model: tiny-qwen-image" in (tmp_path / "g" / "config.yaml").read_text()


def test_the_kohya_file_keeps_diffusers_names_under_lora_unet(qwen_image_lora):
    """ComfyUI reads Qwen-Image LoRAs by the model's own module names, bare, under `transformer.` (the diffusers
    file) or `lora_unet_` with underscores (this file), as diffusers' reader of such files does; the run checked it
    reads back through diffusers' loader before keeping it."""
    from safetensors import safe_open

    with safe_open(str(qwen_image_lora / "lora_kohya.safetensors"), framework="pt") as f:
        keys, header = set(f.keys()), f.metadata()
    assert {"lora_unet_transformer_blocks_0_attn_to_add_out.lora_down.weight",
            "lora_unet_transformer_blocks_0_attn_add_q_proj.lora_up.weight",
            "lora_unet_transformer_blocks_1_attn_to_out_0.alpha"} <= keys  # fmt: skip
    # 8 projections in block 0, 6 in the last block (its text query and text output feed nothing)
    assert len(keys) == 3 * 14 and not any("blocks_1_attn_add_q_proj" in k or "blocks_1_attn_to_add_out" in k for k in keys)
    assert header["ss_network_module"] == "networks.lora_qwen_image" and header["ss_base_model_version"] == "qwen_image"


@pytest.mark.slow  # seconds of whole runs: the full suite keeps it, the fast lane does not
def test_the_kohya_file_of_every_linear_layer_draws_what_the_diffusers_file_draws(photos, tmp_path):
    from PIL import Image

    run = train_mod.train(qwen_image_run(photos, tmp_path / "run", target_modules=["all-linear"], lora_alpha=8,
                                         with_prior_preservation=False, max_steps=2))  # fmt: skip
    assert (run / "lora_kohya.safetensors").is_file()
    images = {}
    for name in (WEIGHT_NAME, "lora_kohya.safetensors"):
        out = tmp_path / name
        generate(settings(GenerateConfig, model="tiny-qwen-image", lora=str(run / name), prompt="a photo of sks dog",
                          num_images=1, steps=2, seed=0, output_dir=str(out)))  # fmt: skip
        images[name] = np.asarray(Image.open(next(out.glob("*.png"))))
    assert np.array_equal(images[WEIGHT_NAME], images["lora_kohya.safetensors"])


@pytest.mark.slow
def test_an_sd_lora_on_a_qwen_image_base_is_one_line(qwen_image_lora, photos, tmp_path):
    sd = train_mod.train(TrainConfig(model="tiny", instance_dir=str(photos), instance_prompt="a photo of sks dog",
                                     output_dir=str(tmp_path / "sd"), rank=2, max_steps=1, num_samples=0))  # fmt: skip
    with pytest.raises(UsageError) as err:
        load_lora(build_tiny_qwen_image(), sd, model="tiny-qwen-image")
    assert "\n" not in str(err.value) and "made for tiny" in str(err.value)
    with pytest.raises(UsageError, match="made for tiny-qwen-image"):
        load_lora(build_tiny_sd(), qwen_image_lora, model="tiny")


def test_the_text_encoder_is_never_trained(photos, tmp_path):
    with pytest.raises(UsageError, match="--train-text-encoder: Qwen-Image trains its transformer alone"):
        train_mod.train(qwen_image_run(photos, tmp_path / "run", train_text_encoder=True))
    assert not (tmp_path / "run").exists()  # refused before anything is written


@pytest.mark.slow  # seconds of whole runs: the full suite keeps it, the fast lane does not
def test_qwen_vl_runs_once_per_prompt_with_base_prediction_prior(photos, tmp_path, monkeypatch):
    import dreambooth.training.setup as setup_mod

    calls, load = [], setup_mod.load_pipeline

    def counting(*args, **kw):
        pipe = load(*args, **kw)
        pipe.text_encoder.register_forward_hook(lambda m, i, o: calls.append(o.hidden_states[-1].shape[0]))
        return pipe

    monkeypatch.setattr(setup_mod, "load_pipeline", counting)
    seen = []
    for steps in (2, 5):
        calls.clear()
        out = train_mod.train(qwen_image_run(photos, tmp_path / f"run{steps}", prior_mode="base-prediction", max_steps=steps))
        seen.append(sum(calls))
        assert (out / "pytorch_lora_weights.safetensors").is_file()
    assert seen == [2, 2]  # the instance and class prompts, whatever the number of steps


@pytest.mark.slow  # seconds of a whole run: the full suite keeps it, the fast lane does not
def test_resume_after_ctrl_c_equals_an_uninterrupted_run(photos, tmp_path, monkeypatch):
    interrupted_then_resumed_equals_whole(qwen_image_run, photos, tmp_path, monkeypatch)


def test_resolution_must_fit_the_packed_latents(photos, tmp_path):
    with pytest.raises(UsageError, match="--resolution 72: Qwen-Image needs a multiple of 16"):
        train_mod.train(qwen_image_run(photos, tmp_path / "run", resolution=72, with_prior_preservation=False))
