import pytest
import torch
from safetensors.torch import save_file

from dreambooth.families import all_families, by_name, family_of, family_of_file, sd
from dreambooth.models import EMBEDDED, describe, load_pipeline


@pytest.mark.parametrize("name", list(EMBEDDED))
def test_every_embedded_model_is_of_the_family_the_registry_names(name):
    pipe = load_pipeline(name)
    base = describe(pipe, name)
    assert family_of(pipe).name == EMBEDDED[name].family == base.family.name
    assert base.version == name  # an embedded model reports itself by its own name, not by its text encoder's width


def test_names_in_lora_headers_old_and_new_map_to_families():
    assert by_name("sd").name == by_name("sd1").name == by_name("tiny").name == "sd"
    assert by_name("sdxl").name == by_name("tiny-sdxl").name == "sdxl"
    assert by_name("flux").name == "flux"
    assert by_name("sd3").name == "sd3"
    assert by_name("z-image").name == "z-image"
    assert by_name("flux2-klein").name == "flux2-klein"
    assert by_name("auraflow") is None and by_name("") is None
    assert len({f.name for f in all_families()}) == len(all_families())


def test_sd_prompt_embeddings_are_the_pipelines_own():
    pipe = sd.build_tiny()
    prompts = ["a photo of sks dog", "a photo of a dog"]
    ours = sd.FAMILY.encode_prompts([pipe.tokenizer], [pipe.text_encoder], prompts, "cpu")
    reference = pipe.encode_prompt(prompts, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)[0]
    assert set(ours) == {"hidden"} and torch.allclose(ours["hidden"], reference, atol=1e-6)


def test_single_file_checkpoints_are_told_apart_by_their_tensor_names(tmp_path):
    unet, second_encoder = "model.diffusion_model.input_blocks.0.0.weight", "conditioner.embedders.1.model.ln_final.weight"
    save_file({unet: torch.zeros(1)}, str(tmp_path / "sd.safetensors"))
    save_file({unet: torch.zeros(1), second_encoder: torch.zeros(1)}, str(tmp_path / "xl.safetensors"))
    assert family_of_file(tmp_path / "sd.safetensors").name == "sd"
    assert family_of_file(tmp_path / "xl.safetensors").name == "sdxl"
    for name, key, family in [
        ("flux.safetensors", "double_blocks.0.img_attn.qkv.weight", "flux"),
        ("flux-aio.safetensors", "model.diffusion_model.double_blocks.0.img_attn.qkv.weight", "flux"),
        ("flux-diffusers.safetensors", "single_transformer_blocks.0.attn.to_q.weight", "flux"),
        ("sd35.safetensors", "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", "sd3"),
        ("z-image.safetensors", "x_pad_token", "z-image"),
        ("z-image-comfy.safetensors", "model.diffusion_model.x_pad_token", "z-image"),
        ("flux2.safetensors", "double_stream_modulation_img.lin.weight", "flux2-klein"),
        ("flux2-diffusers.safetensors", "double_stream_modulation_img.linear.weight", "flux2-klein"),
    ]:
        save_file({key: torch.zeros(1)}, str(tmp_path / name))
        assert family_of_file(tmp_path / name).name == family, name


@pytest.mark.parametrize(
    "model",
    ["tiny", *(pytest.param(m, marks=pytest.mark.slow) for m in ("tiny-flux", "tiny-sd3", "tiny-z-image", "tiny-flux2-klein"))],
)
def test_target_presets_widen_in_order(model):
    from dreambooth.lora.adapter import add_lora
    from dreambooth.models import describe, load_pipeline
    from dreambooth.training.setup import denoiser_targets

    counts = {}
    for preset in ("attention", "attention-mlp", "all-linear"):
        pipe = load_pipeline(model)
        family = describe(pipe, model).family
        denoiser = getattr(pipe, family.denoiser)
        add_lora(denoiser, 2, 2.0, 0.0, denoiser_targets([preset], family))
        counts[preset] = sum(1 for name, _ in denoiser.named_modules() if name.endswith("lora_A"))
    assert 0 < counts["attention"] < counts["attention-mlp"] < counts["all-linear"], counts
    assert denoiser_targets([], family) == denoiser_targets(["attention"], family) == list(family.denoiser_targets)


def test_a_preset_stands_alone():
    from dreambooth.errors import UsageError
    from dreambooth.families.sd import FAMILY
    from dreambooth.training.setup import denoiser_targets

    with pytest.raises(UsageError, match="stands alone"):
        denoiser_targets(["attention", "proj_in"], FAMILY)


def test_a_single_file_of_a_family_diffusers_loads_from_folders_only_is_one_line(tmp_path):
    from dreambooth.errors import UsageError

    save_file({"double_stream_modulation_img.lin.weight": torch.zeros(1)}, str(tmp_path / "klein.safetensors"))
    with pytest.raises(
        UsageError, match=r"FLUX.2 \[klein\] checkpoint; diffusers loads FLUX.2 \[klein\] from a diffusers folder"
    ):
        load_pipeline(str(tmp_path / "klein.safetensors"))
