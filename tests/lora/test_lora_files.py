import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from dreambooth.config import TrainConfig
from dreambooth.errors import UsageError
from dreambooth.lora.files import load_lora
from dreambooth.training.loop import train


@pytest.fixture(scope="module")
def trained(tiny_base, tmp_path_factory):
    """A LoRA trained on the tiny model loaded from a local diffusers folder, UNet and text encoder."""
    from conftest import SAMPLE

    out = tmp_path_factory.mktemp("lora") / "run"
    train(
        TrainConfig(
            model=str(tiny_base),
            instance_dir=str(SAMPLE),
            instance_prompt="a photo of sks dog",
            output_dir=str(out),
            train_text_encoder=True,
            rank=4,
            learning_rate=1e-2,
            text_encoder_lr=1e-2,
            max_steps=10,
            num_samples=0,
        )
    )
    return out


def draw(pipe, prompt="a photo of sks dog"):
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np").images[0]


def test_plain_diffusers_loads_the_folder_and_its_output_changes(tiny_base, trained):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None)
    before = draw(pipe)
    pipe.load_lora_weights(trained)
    assert pipe.unet.peft_config and pipe.text_encoder.peft_config  # both parts were found in the file
    after = draw(pipe)
    assert np.abs(after - before).mean() > 1e-3


def test_scales_zero_give_the_base_model_and_each_part_matters(tiny_base, trained):
    base = draw(StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None))
    outputs = {}
    for scales in [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)]:
        pipe = StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None)
        load_lora(pipe, trained, *scales)
        outputs[scales] = draw(pipe)
    assert np.allclose(outputs[(0.0, 0.0)], base, atol=1e-5)
    for scales in [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)]:
        assert np.abs(outputs[scales] - base).mean() > 1e-4, scales


def test_lora_for_another_base_is_refused(trained):
    from diffusers import UNet2DConditionModel

    from dreambooth.families.sd import build_tiny as build_tiny_pipeline

    pipe = build_tiny_pipeline()
    # Same layout, wider layers: every LoRA matrix has the wrong shape.
    pipe.unet = UNet2DConditionModel(
        sample_size=32,
        block_out_channels=(64, 128),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )
    with pytest.raises(UsageError, match=r"made for .*tiny-sd.*is 64->64 there but 128->128 here"):
        load_lora(pipe, trained)


def with_header(trained, path, **changes):
    """A copy of the trained LoRA file with header entries changed (None removes one)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    source = str(trained / "pytorch_lora_weights.safetensors")
    with safe_open(source, framework="pt") as f:
        meta = {**f.metadata(), **changes}
    save_file(load_file(source), str(path), metadata={k: v for k, v in meta.items() if v is not None})
    return path


def test_lora_of_another_generation_is_refused_naming_both(trained, tmp_path):
    from dreambooth.families.sd import build_tiny as build_tiny_pipeline

    sd2 = with_header(trained, tmp_path / "sd2.safetensors", **{"dreambooth.version": "sd2"})
    pipe = build_tiny_pipeline()
    pipe.text_encoder.config.hidden_size = 768  # reads as an SD 1.x model
    with pytest.raises(UsageError, match=r"made for .*tiny-sd \(sd2\), but --model the base model is sd1"):
        load_lora(pipe, sd2)
    load_lora(build_tiny_pipeline(), sd2)  # a model of no known generation is checked by its shapes alone


def test_lora_header_of_an_older_version_names_its_family(trained, tmp_path):
    """Files written before families were plug-ins hold the generation (e.g. 'tiny-sdxl') as their family."""
    from dreambooth.families.sd import build_tiny as build_tiny_pipeline

    old = with_header(trained, tmp_path / "old.safetensors", **{"dreambooth.family": "tiny-sdxl", "dreambooth.version": None})
    with pytest.raises(UsageError, match=r"\(tiny-sdxl\), but --model the base model is sd"):
        load_lora(build_tiny_pipeline(), old)


def test_pickle_lora_needs_the_flag_and_is_read_weights_only(tiny_base, trained, tmp_path):
    from safetensors.torch import load_file

    pickled = tmp_path / "lora.bin"
    torch.save(load_file(str(trained / "pytorch_lora_weights.safetensors")), pickled)
    with pytest.raises(UsageError, match="--allow-pickle"):
        load_lora(StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None), pickled)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None)
    load_lora(pipe, pickled, allow_pickle=True)
    assert pipe.unet.peft_config

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.bin"
    torch.save({"x": Evil()}, evil)
    with pytest.raises(UsageError, match="weights-only"):
        load_lora(StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None), evil, allow_pickle=True)


def test_damaged_lora_file_is_named(trained, tmp_path):
    from dreambooth.families.sd import build_tiny as build_tiny_pipeline

    damaged = tmp_path / "cut.safetensors"
    damaged.write_bytes((trained / "pytorch_lora_weights.safetensors").read_bytes()[:100])
    with pytest.raises(UsageError, match="cut.safetensors: not a readable safetensors file"):
        load_lora(build_tiny_pipeline(), damaged)


def test_header_records_the_base_model(trained, tiny_base):
    from safetensors import safe_open

    with safe_open(str(trained / "pytorch_lora_weights.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["dreambooth.base_model"] == str(tiny_base) and meta["dreambooth.family"] == "sd"
    assert meta["dreambooth.rank"] == "4" and meta["dreambooth.steps"] == "10"
    assert "lora_adapter_metadata" in meta  # diffusers' own entry survives


def test_missing_lora_file(tmp_path):
    from dreambooth.families.sd import build_tiny as build_tiny_pipeline

    with pytest.raises(UsageError, match="no pytorch_lora_weights.safetensors"):
        load_lora(build_tiny_pipeline(), tmp_path)
