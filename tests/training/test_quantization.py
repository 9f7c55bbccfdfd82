"""--base-quantization: the denoiser stored in 4 or 8 bits under a LoRA that trains. diffusers' quantizers refuse
to start without CUDA, but bitsandbytes' layers run on the CPU, so these tests lift diffusers' check to run the
whole GPU path here; without that the run warns and trains the full-precision base."""

import pytest
import torch
from diffusers import FluxPipeline

import dreambooth.training.setup as setup_mod
from dreambooth.config import TrainConfig
from dreambooth.fields import settings
from dreambooth.lora.files import WEIGHT_NAME
from dreambooth.training.loop import train


def run(photos, out, **kw):
    base = dict(model="tiny-flux", instance_dir=str(photos), instance_prompt="a photo of sks dog", output_dir=str(out),
                rank=4, learning_rate=1e-2, max_steps=2, num_samples=0, seed=1)  # fmt: skip
    return settings(TrainConfig, **{**base, **kw})


@pytest.fixture
def quantizers_on_the_cpu(monkeypatch):
    import diffusers.quantizers.bitsandbytes.bnb_quantizer as bnb_quantizer

    for quantizer in (bnb_quantizer.BnB4BitDiffusersQuantizer, bnb_quantizer.BnB8BitDiffusersQuantizer):
        monkeypatch.setattr(quantizer, "validate_environment", lambda self, *args, **kwargs: None)
    monkeypatch.setattr(setup_mod, "quantizes_on", lambda device: True)


@pytest.mark.slow
@pytest.mark.parametrize("mode, layer", [("nf4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_a_quantized_base_trains_a_lora_that_loads_on_the_plain_base(
    mode, layer, quantizers_on_the_cpu, photos, tmp_path, monkeypatch
):
    seen = {}
    original = setup_mod.adapt

    def adapt(cfg, pipe, *args, **kwargs):
        out = original(cfg, pipe, *args, **kwargs)
        seen["layers"] = {type(m.base_layer).__name__ for m in pipe.transformer.modules() if hasattr(m, "base_layer")}
        seen["frozen"] = [type(m).__name__ for m in pipe.transformer.modules() if type(m).__name__ == layer]
        return out

    monkeypatch.setattr(setup_mod, "adapt", adapt)
    folder = train(run(photos, tmp_path / "run", base_quantization=mode))
    assert seen["layers"] == {layer}  # every adapter sits on a quantized layer
    assert len(seen["frozen"]) > 8
    # the LoRA is plain: it loads on the full-precision base in plain diffusers and changes the image
    from dreambooth.families.flux import build_tiny

    pipe = build_tiny()
    pipe.set_progress_bar_config(disable=True)

    def draw():
        return pipe("a photo of sks dog", height=64, width=64, num_inference_steps=2, output_type="np",
                    generator=torch.Generator().manual_seed(0), max_sequence_length=32).images[0]  # fmt: skip

    before = draw()
    FluxPipeline.load_lora_weights(pipe, str(folder), weight_name=WEIGHT_NAME)
    assert abs(draw() - before).max() > 1e-3
    assert (folder / "lora_kohya.safetensors").is_file()


def test_without_cuda_the_run_warns_and_trains_the_full_precision_base(photos, tmp_path, capsys):
    train(run(photos, tmp_path / "run", base_quantization="nf4", max_steps=1, export="none"))
    out = capsys.readouterr().out
    assert "warning: --base-quantization nf4 needs a CUDA GPU; training on the full-precision base on this cpu" in out
    assert "base_quantization: none" in (tmp_path / "run" / "config.yaml").read_text()  # what the run did


def test_a_quantized_base_has_its_own_class_image_bank():
    import dataclasses

    import torch

    from dreambooth.training.setup import bank_for

    cfg = settings(TrainConfig, model="tiny-flux", class_prompt="a photo of a dog", with_prior_preservation=True)
    plain = bank_for(cfg, "a photo of a dog", torch.bfloat16)
    assert bank_for(dataclasses.replace(cfg, base_quantization="nf4"), "a photo of a dog", torch.bfloat16) != plain
    assert bank_for(dataclasses.replace(cfg, base_quantization="none"), "a photo of a dog", torch.bfloat16) == plain


def test_an_unknown_quantization_is_one_line(photos, tmp_path, capsys):
    from dreambooth.cli import main

    assert main(["train", "--model", "tiny-flux", "--instance-dir", str(photos), "--instance-prompt", "a photo of sks dog",
                 "--output-dir", str(tmp_path / "run"), "--base-quantization", "int4"]) == 2  # fmt: skip
    assert "--base-quantization" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-z-image", "tiny-flux2-klein"])
def test_the_qwen_encoder_families_train_on_an_nf4_base(model, quantizers_on_the_cpu, photos, tmp_path, monkeypatch):
    """Z-Image's and FLUX.2 [klein]'s transformers quantize as FLUX.1's does: every adapter on a 4-bit layer."""
    seen = {}
    original = setup_mod.adapt

    def adapt(cfg, pipe, *args, **kwargs):
        out = original(cfg, pipe, *args, **kwargs)
        seen["layers"] = {type(m.base_layer).__name__ for m in pipe.transformer.modules() if hasattr(m, "base_layer")}
        return out

    monkeypatch.setattr(setup_mod, "adapt", adapt)
    folder = train(run(photos, tmp_path / "run", model=model, base_quantization="nf4", max_sequence_length=32))
    assert seen["layers"] == {"Linear4bit"} and (folder / WEIGHT_NAME).is_file()
