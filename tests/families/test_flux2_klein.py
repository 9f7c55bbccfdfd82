"""The FLUX.2 [klein] path end to end on the tiny [klein]-shaped model: train -> plain diffusers -> generate; resume."""

import numpy as np
import pytest
import torch
from diffusers import Flux2KleinPipeline
from safetensors import safe_open
from test_flux import every_adapter_was_read, interrupted_then_resumed_equals_whole
from test_z_image import COMFYUI_ENDINGS

import dreambooth.training.loop as train_mod
from dreambooth.config import GenerateConfig, TrainConfig
from dreambooth.errors import UsageError
from dreambooth.families.flux2_klein import FAMILY
from dreambooth.families.flux2_klein import build_tiny as build_tiny_klein
from dreambooth.families.z_image import build_tiny as build_tiny_z_image
from dreambooth.fields import settings
from dreambooth.generation import generate
from dreambooth.lora.files import WEIGHT_NAME, load_lora
from dreambooth.models import describe
from dreambooth.sampling import to_images


def klein_run(photos, out, **kw) -> TrainConfig:
    base = dict(model="tiny-flux2-klein", instance_dir=str(photos), instance_prompt="a photo of sks dog",
                output_dir=str(out), with_prior_preservation=True, class_prompt="a photo of a dog", num_class_images=2,
                class_image_steps=2, rank=4, learning_rate=1e-2, max_steps=4, num_samples=0, seed=4)  # fmt: skip
    return settings(TrainConfig, **{**base, **kw})


@pytest.fixture(scope="module")
def klein_lora(tmp_path_factory):
    from conftest import SAMPLE

    out = tmp_path_factory.mktemp("klein") / "run"
    # at 1e-2 six steps move the tiny model's images by 5e-4 on average: too little to tell from rounding
    run = klein_run(SAMPLE, out, max_steps=6, num_samples=1, sample_steps=2, weighting_scheme="logit_normal", learning_rate=3e-2)
    return train_mod.train(run)


def draw(pipe, output_type="np"):
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt="a photo of sks dog", height=64, width=64, num_inference_steps=3, guidance_scale=4.0,
                generator=torch.Generator().manual_seed(0), output_type=output_type, max_sequence_length=32).images  # fmt: skip


def test_tiny_klein_is_described_as_flux2_klein():
    info = describe(build_tiny_klein(), "tiny-flux2-klein")
    assert (info.family.name, info.version, info.prediction_type, info.native_resolution) == (
        "flux2-klein", "tiny-flux2-klein", "flow (velocity)", 64
    )  # fmt: skip


def test_prompt_embeddings_are_the_pipelines_own():
    pipe = build_tiny_klein()
    pipe.tokenizer.model_max_length = 32
    prompts = ["a photo of sks dog", "a photo of a dog in the snow"]
    with torch.no_grad():
        ours = FAMILY.encode_prompts([pipe.tokenizer], [pipe.text_encoder], prompts, "cpu")
        theirs, _ = pipe.encode_prompt(list(prompts), "cpu", max_sequence_length=32)
    assert ours["hidden"].shape == (2, 32, 48) and torch.allclose(ours["hidden"], theirs, atol=1e-6)


def test_latents_are_normalised_and_decoded_as_the_pipeline_does():
    """The VAE's batch-norm statistics of the 2x2 patches: what the pipeline returns as latents, normalised as training
    sees latents and decoded by this tool, is the pipeline's own image."""
    pipe = build_tiny_klein()
    image = draw(pipe)[0]
    latents = draw(pipe, "latent")
    with torch.no_grad():
        ours = to_images(pipe, FAMILY.sampled_latents(pipe, latents, 64, 64))[0]
    assert np.abs(np.asarray(ours, dtype=np.float32) / 255 - image).max() < 3 / 255
    assert not torch.allclose(FAMILY.sampled_latents(pipe, latents, 64, 64), latents, atol=1e-2)  # no identity


@pytest.mark.slow
def test_klein_lora_loads_in_plain_diffusers_and_changes_the_image(klein_lora, tmp_path):
    folder = tmp_path / "base"
    build_tiny_klein().save_pretrained(folder)
    pipe = Flux2KleinPipeline.from_pretrained(folder)
    before = draw(pipe)[0]
    pipe.load_lora_weights(klein_lora)
    assert every_adapter_was_read(pipe.transformer)
    assert not getattr(pipe.text_encoder, "peft_config", None)  # Qwen3 is never trained
    assert np.abs(draw(pipe)[0] - before).mean() > 1e-3
    card = (klein_lora / "README.md").read_text()
    assert (klein_lora / "samples.png").is_file() and "Flux2KleinPipeline" in card


def test_the_file_is_named_as_comfyui_reads_flux2_loras(klein_lora):
    """ComfyUI runs FLUX.2 as its FLUX model, whose key map reads `transformer.<diffusers module>` through
    flux_to_diffusers: the joint blocks' q/k/v (into the fused qkv), out and text-stream projections, and the single
    blocks' `attn.to_qkv_mlp_proj` and `attn.to_out`, as here (the joint blocks' `attn.to_out` list not)."""
    with safe_open(str(klein_lora / WEIGHT_NAME), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("transformer.") and k.endswith(COMFYUI_ENDINGS) for k in keys)
    modules = {k.removeprefix("transformer.").rsplit(".lora", 1)[0] for k in keys}
    joint = {f"transformer_blocks.0.attn.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                                                        "add_v_proj", "to_add_out")}  # fmt: skip
    assert modules == joint | {"single_transformer_blocks.0.attn.to_qkv_mlp_proj", "single_transformer_blocks.0.attn.to_out"}


# FLUX.2 [klein] 4B as released (its transformer's config): 5 joint and 20 single blocks, 24 heads of 128, reading three
# of Qwen3-4B's layers (3 x 2560)
KLEIN_4B = dict(patch_size=1, in_channels=128, num_layers=5, num_single_layers=20, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=3 * 2560, mlp_ratio=3.0, guidance_embeds=False)  # fmt: skip
# Where ComfyUI puts `transformer.<diffusers module>` of a LoRA for its FLUX.2 model, as read in ComfyUI v0.19.3 (commit
# 3086026401180c9216bcb6ace442a4e3587d2c66): comfy/lora.py's model_lora_keys_unet maps, for every FLUX model (FLUX.2's
# is one), the `transformer.` form of each weight comfy/utils.py's flux_to_diffusers names; for FLUX.2's blocks these.
# A joint block's q, k and v each land on a third of the fused qkv weight, in that order; the rest on a whole weight.
COMFYUI_JOINT = {
    **{f"attn.{p}": ("img_attn.qkv", i) for i, p in enumerate(("to_q", "to_k", "to_v"))},
    **{f"attn.{p}": ("txt_attn.qkv", i) for i, p in enumerate(("add_q_proj", "add_k_proj", "add_v_proj"))},
    "attn.to_out.0": ("img_attn.proj", None),
    "attn.to_add_out": ("txt_attn.proj", None),
    "ff.linear_in": ("img_mlp.0", None),
    "ff.linear_out": ("img_mlp.2", None),
    "ff_context.linear_in": ("txt_mlp.0", None),
    "ff_context.linear_out": ("txt_mlp.2", None),
}
COMFYUI_SINGLE = {"attn.to_qkv_mlp_proj": "linear1", "attn.to_out": "linear2"}
# outside the blocks (the final modulation with its scale and shift halves swapped, as diffusers' converter swaps them)
COMFYUI_OUTSIDE = {"x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear",
                   "norm_out.linear": "final_layer.adaLN_modulation.1"}  # fmt: skip


def comfyui_flux2_weights(width: int, mlp: int, context: int, channels: int) -> dict[str, tuple[int, int]]:
    """ComfyUI's FLUX.2 weights (out, in), as comfy/ldm/flux at that commit builds them: fused q/k/v; the gated MLP's
    input, twice the MLP's width; the single blocks' input fused from q/k/v and that MLP input, and their output read
    from attention and MLP side by side."""
    return {"img_attn.qkv": (3 * width, width), "txt_attn.qkv": (3 * width, width), "img_attn.proj": (width, width),
            "txt_attn.proj": (width, width), "img_mlp.0": (2 * mlp, width), "txt_mlp.0": (2 * mlp, width),
            "img_mlp.2": (width, mlp), "txt_mlp.2": (width, mlp), "linear1": (3 * width + 2 * mlp, width),
            "linear2": (width, width + mlp), "img_in": (width, channels), "txt_in": (width, context),
            "final_layer.linear": (channels, width), "final_layer.adaLN_modulation.1": (2 * width, width)}  # fmt: skip


def comfyui_place(module: str) -> tuple[str, int | None] | None:
    """(ComfyUI's weight, which third of it or None for all of it) for a diffusers module of FLUX.2; None: unmapped."""
    if module in COMFYUI_OUTSIDE:
        return COMFYUI_OUTSIDE[module], None
    blocks, _, rest = module.partition(".")
    layer = rest.partition(".")[2]
    if blocks == "transformer_blocks":
        return COMFYUI_JOINT.get(layer)
    if blocks == "single_transformer_blocks" and layer in COMFYUI_SINGLE:
        return COMFYUI_SINGLE[layer], None
    return None


def klein_4b_file(tmp_path, preset: str) -> dict[str, tuple[int, int]]:
    """The shapes of the file the tool writes for a FLUX.2 [klein] 4B-shaped transformer, the base on the meta device:
    adapters added as training adds them (`--target-modules preset`), their own weights in memory, saved by save_lora."""
    from diffusers import Flux2Transformer2DModel

    from dreambooth.lora.adapter import add_lora
    from dreambooth.lora.files import save_lora
    from dreambooth.training.setup import denoiser_targets

    with torch.device("meta"):
        transformer = Flux2Transformer2DModel(**KLEIN_4B)
    add_lora(transformer, 4, 4.0, 0.0, denoiser_targets([preset], FAMILY))
    for name, p in list(transformer.named_parameters()):
        if p.requires_grad:  # a meta tensor cannot be given storage in place: the adapter's weights are replaced
            owner, _, attr = name.rpartition(".")
            setattr(transformer.get_submodule(owner), attr, torch.nn.Parameter(torch.zeros(p.shape)))
    path = save_lora(tmp_path / preset, Flux2KleinPipeline, {"transformer": transformer})
    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def comfyui_unplaced(shapes: dict[str, tuple[int, int]]) -> tuple[int, set[str]]:
    """(modules in the file, those ComfyUI maps no form for); every key is checked to be `transformer.<module>` with
    an ending ComfyUI's loader reads, and every mapped module's update to have the shape of the part of ComfyUI's
    4B weight it lands on."""
    weights = comfyui_flux2_weights(width=3072, mlp=3 * 3072, context=3 * 2560, channels=128)
    pairs: dict[str, dict[str, tuple[int, int]]] = {}
    for key, shape in shapes.items():
        ending = next((e for e in COMFYUI_ENDINGS if key.endswith(e)), None)
        assert key.startswith("transformer.") and ending is not None, key
        part = "down" if ending in (".lora_A.weight", ".lora.down.weight") else "up"
        pairs.setdefault(key.removeprefix("transformer.").removesuffix(ending), {})[part] = shape
    unplaced = set()
    for module, pair in pairs.items():
        place = comfyui_place(module)
        if place is None:
            unplaced.add(module)
            continue
        weight, third = place
        rows, columns = weights[weight]
        assert (pair["up"][0], pair["down"][1]) == (rows if third is None else rows // 3, columns), module
    return len(pairs), unplaced


@pytest.mark.parametrize("preset, modules", [("attention", 5 * 8 + 20 * 2), ("attention-mlp", 5 * 12 + 20 * 2)])
def test_the_klein_file_has_the_forms_comfyui_maps_for_flux2_at_the_4b_shape(tmp_path, preset, modules):
    """At the released 4B shape, every module of the file (80 by default, 100 with the feed-forward layers) is of a
    form ComfyUI maps for FLUX.2, and its update has the shape of the part of ComfyUI's weight it lands on: a third of
    a fused qkv (3072 of 9216 rows), the whole 18432-row gated-MLP input, the whole 27648-row fused input of a single
    block. ComfyUI's own loader, run once on such files at that commit, loaded every key and placed every update
    exactly as diffusers' converter of FLUX.2 checkpoints places those weights."""
    count, unplaced = comfyui_unplaced(klein_4b_file(tmp_path, preset))
    assert (count, unplaced) == (modules, set())


def test_comfyui_maps_every_layer_of_an_all_linear_klein_file_but_the_shared_modulation_and_timestep(tmp_path):
    """With every linear layer adapted (109 modules at 4B), ComfyUI at that commit maps all but five: its FLUX map
    names FLUX.1's `time_text_embed` but not FLUX.2's `time_guidance_embed`, nor FLUX.2's three shared modulation
    layers; its loader warns 'lora key not loaded' for their 10 keys, and the image and text input, the output and
    the final modulation land where diffusers' converter puts them."""
    count, unplaced = comfyui_unplaced(klein_4b_file(tmp_path, "all-linear"))
    assert count == 109 and unplaced == {
        "time_guidance_embed.timestep_embedder.linear_1", "time_guidance_embed.timestep_embedder.linear_2",
        "double_stream_modulation_img.linear", "double_stream_modulation_txt.linear", "single_stream_modulation.linear",
    }  # fmt: skip
    assert unplaced == set(FAMILY.comfyui_unmapped)  # what the run and its card name (below)


def test_an_all_linear_file_gets_a_copy_with_comfyuis_own_names_for_what_its_map_lacks(tmp_path):
    """ComfyUI's generic map reads `diffusion_model.<its own weight>`: its loader, run once at the commit above on such
    a copy of an all-linear 4B file, loaded 109 of 109 modules with no difference. The diffusers file cannot hold those
    names (a `diffusion_model.` key makes diffusers read the whole file as another layout), so they go in a copy."""
    from safetensors.torch import load_file

    from dreambooth.lora.files import COMFYUI_NAME, WEIGHT_NAME, write_comfyui_copy

    klein_4b_file(tmp_path, "all-linear")
    native = tmp_path / "all-linear" / WEIGHT_NAME
    copy = write_comfyui_copy(native, "transformer", FAMILY.comfyui_unmapped)
    assert copy == native.parent / COMFYUI_NAME
    shapes = {k: tuple(v.shape) for k, v in load_file(str(copy)).items()}
    ours = {k: v for k, v in shapes.items() if k.startswith("transformer.")}
    assert comfyui_unplaced(ours) == (104, set())
    renamed = {k.removeprefix("diffusion_model.").rsplit(".lora", 1)[0] for k in shapes if k.startswith("diffusion_model.")}
    assert renamed == set(FAMILY.comfyui_unmapped.values()) and len(shapes) == 2 * 109
    klein_4b_file(tmp_path, "attention-mlp")  # nothing to rename: no copy
    assert write_comfyui_copy(tmp_path / "attention-mlp" / WEIGHT_NAME, "transformer", FAMILY.comfyui_unmapped) is None


@pytest.mark.slow
def test_an_all_linear_klein_run_writes_the_copy_and_says_which_file_comfyui_loads(tmp_path, capsys):
    from conftest import SAMPLE

    from dreambooth.lora.files import COMFYUI_NAME

    out = train_mod.train(klein_run(SAMPLE, tmp_path / "run", target_modules=["all-linear"], with_prior_preservation=False,
                                    max_steps=1))  # fmt: skip
    assert (out / COMFYUI_NAME).is_file()
    said = capsys.readouterr().out
    assert f"ComfyUI loads {COMFYUI_NAME} whole" in said and all(m in said for m in FAMILY.comfyui_unmapped)
    assert f"ComfyUI loads `{COMFYUI_NAME}` whole" in (out / "README.md").read_text()
    default = train_mod.train(klein_run(SAMPLE, tmp_path / "default", with_prior_preservation=False, max_steps=1))
    assert not (default / COMFYUI_NAME).exists()
    assert "ComfyUI loads pytorch_lora_weights.safetensors as it is" in capsys.readouterr().out


@pytest.mark.slow
def test_generate_draws_with_the_klein_base(klein_lora, tmp_path):
    paths = generate(GenerateConfig(lora=str(klein_lora), prompt="a photo of sks dog on the beach", num_images=1, steps=2,
                                    output_dir=str(tmp_path / "g")))  # fmt: skip
    assert len(paths) == 1 and "model: tiny-flux2-klein" in (tmp_path / "g" / "config.yaml").read_text()
    with pytest.raises(UsageError, match="--negative-prompt: Flux2KleinPipeline takes no negative prompt"):
        generate(GenerateConfig(lora=str(klein_lora), prompt="a photo of sks dog", negative_prompt="blurry", num_images=1,
                                steps=2, output_dir=str(tmp_path / "n")))  # fmt: skip


def test_a_lora_of_another_family_is_one_line(klein_lora, tmp_path):
    with pytest.raises(UsageError) as err:
        load_lora(build_tiny_z_image(), klein_lora, model="tiny-z-image")
    assert "\n" not in str(err.value) and "made for tiny-flux2-klein" in str(err.value)


@pytest.mark.slow  # seconds of a whole run: the full suite keeps it, the fast lane does not
def test_resume_after_ctrl_c_equals_an_uninterrupted_run(photos, tmp_path, monkeypatch):
    interrupted_then_resumed_equals_whole(klein_run, photos, tmp_path, monkeypatch, prior_mode="base-prediction")
