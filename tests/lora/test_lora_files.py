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


@pytest.mark.slow  # seconds of a whole run: the full suite keeps it, the fast lane does not
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


@pytest.mark.slow
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


# ---------------------------------------------------------------- spelling and strength, whatever the reader


def adapted(build, rank: int, alpha: float):
    """A tiny pipeline with LoRA on its denoiser and text encoders, the up weights drawn at random (peft's init leaves
    them at zero, which would make every strength look right); (pipe, adapted components)."""
    from dreambooth.families import components, family_of
    from dreambooth.lora.adapter import add_lora

    pipe = build()
    family = family_of(pipe)
    parts = components(pipe, family)
    torch.manual_seed(0)
    for name, model in parts.items():
        targets = family.denoiser_targets if name == family.denoiser else family.text_encoder_targets
        add_lora(model, rank, alpha, 0.0, list(targets))
        for key, p in model.named_parameters():
            if "lora_B" in key:
                p.data.normal_(0, 0.2)
    return pipe, parts


@torch.no_grad()
def outputs(pipe) -> dict[str, torch.Tensor]:
    """The SD text encoder's hidden states for fixed ids, and the UNet's output on fixed inputs."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (1, 77), generator=g)
    latents, hidden = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, 77, 32, generator=g)
    return {"text_encoder": pipe.text_encoder(ids)[0], "unet": pipe.unet(latents, torch.tensor([500]), hidden).sample}


def assert_same(got: dict, want: dict) -> None:
    for part in want:
        assert torch.allclose(got[part], want[part], atol=1e-5, rtol=1e-4), (part, (got[part] - want[part]).abs().max())


def merged_by_tensors(path) -> dict[str, torch.Tensor]:
    """What a loader that reads tensors alone (ComfyUI, A1111, sd-scripts read them so) draws with: each module's
    weight plus (alpha / rank) · up · down, where the file has an `.alpha` tensor, else plus up · down. Keys in the
    diffusers layout name their module; kohya keys are the module's path with `_` for `.`, as for SD 1.x."""
    import re

    from safetensors.torch import load_file

    from dreambooth.families.sd import build_tiny as build_tiny_pipeline
    from dreambooth.lora.adapter import find_module

    pipe, state = build_tiny_pipeline(), load_file(str(path))
    kohya_names = {
        prefix + (path if path.startswith(extra) else extra + path).replace(".", "_"): module
        for prefix, model, extra in (("lora_unet_", pipe.unet, ""), ("lora_te_", pipe.text_encoder, "text_model."))
        for path, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    for key, down in state.items():
        if m := re.fullmatch(r"(unet)\.(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.down\.weight", key):
            path = f"{m[2]}.{m[3]}" + (".0" if m[3] == "to_out" else "")
            module, up, alpha = find_module(pipe.unet, path), state[key.replace(".down.", ".up.")], None
        elif m := re.fullmatch(r"(unet|text_encoder)\.(.+)\.(?:lora|lora_linear_layer)\.down\.weight", key):
            module, up, alpha = find_module(getattr(pipe, m[1]), m[2]), state[key.replace(".down.", ".up.")], None
        elif m := re.fullmatch(r"(lora_\w+)\.lora_down\.weight", key):
            module, up, alpha = kohya_names[m[1]], state[f"{m[1]}.lora_up.weight"], state.get(f"{m[1]}.alpha")
        else:
            continue
        scale = 1.0 if alpha is None else alpha.item() / down.shape[0]
        module.weight.data += scale * up @ down
    return outputs(pipe)


def old_version_file(folder, parts: dict, alpha: float):
    """The file earlier versions wrote: module names as transformers 5 has them, weights as trained, alpha only in
    diffusers' header entry (and in `dreambooth.alpha`)."""
    from dreambooth.lora.files import adapter_metadata, add_header_metadata, lora_state_dict

    kwargs = {f"{name}_lora_layers": lora_state_dict(model) for name, model in parts.items()}
    kwargs.update({f"{name}_lora_adapter_metadata": adapter_metadata(model) for name, model in parts.items()})
    StableDiffusionPipeline.save_lora_weights(folder, safe_serialization=True, **kwargs)
    add_header_metadata(folder / "pytorch_lora_weights.safetensors", {"dreambooth.alpha": str(alpha), "dreambooth.rank": "4"})
    return folder / "pytorch_lora_weights.safetensors"


@pytest.mark.parametrize("build", ["sd", "sdxl"])
def test_text_encoder_modules_are_written_as_released_checkpoints_spell_them(build, tmp_path):
    """transformers 5 names CLIP's layers `encoder.layers.N`; released checkpoints, shared LoRAs and transformers 4
    (which the older diffusers stack needs) say `text_model.encoder.layers.N`."""
    from safetensors import safe_open

    from dreambooth.families.sd import build_tiny as build_tiny_sd
    from dreambooth.families.sdxl import build_tiny as build_tiny_sdxl
    from dreambooth.lora.files import save_lora

    pipe, parts = adapted({"sd": build_tiny_sd, "sdxl": build_tiny_sdxl}[build], 4, 4.0)
    with safe_open(str(save_lora(tmp_path, type(pipe), parts)), framework="pt") as f:
        encoders = {k.split(".")[0] for k in f.keys() if k.startswith("text_encoder")}
        assert encoders == ({"text_encoder"} if build == "sd" else {"text_encoder", "text_encoder_2"})
        assert all(
            k.startswith(f"{k.split('.')[0]}.text_model.encoder.layers.") for k in f.keys() if k.startswith("text_encoder")
        )


# What ComfyUI maps for SD 1.x / SDXL, as its comfy/lora.py (model_lora_keys_unet, model_lora_keys_clip) and
# comfy/weight_adapter/lora.py read them (at commit a125cd84b054a57729b5eecab930ca9408719832; the check that found the
# UNet unread ran v0.19.3, commit 3086026401180c9216bcb6ace442a4e3587d2c66): a UNet module by its diffusers name, with
# `.to_` spelled `.processor.to_` and `to_out.0` as `to_out`, with or without `unet.`; a CLIP layer as
# `text_encoder[_2].text_model.encoder.layers.N.<self_attn.q_proj, ...>`; then one of these endings.
COMFYUI_ENDINGS = tuple(
    f"{sep}{part}.weight" for sep in (".lora_", "_lora.", ".lora.", ".lora_linear_layer.") for part in ("up", "down")
) + (".lora_A.weight", ".lora_B.weight")
COMFYUI_CLIP_LAYERS = ("mlp.fc1", "mlp.fc2", "self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj", "self_attn.out_proj")


def comfyui_module_names(pipe) -> set[str]:
    names = set()
    for path, module in pipe.unet.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            spelled = path.replace(".to_", ".processor.to_")
            spelled = spelled.removesuffix(".0") if spelled.endswith(".to_out.0") else spelled
            names |= {spelled, f"unet.{spelled}"}
    for encoder in ("text_encoder", "text_encoder_2"):
        if getattr(pipe, encoder, None) is not None:
            layers = getattr(pipe, encoder).config.num_hidden_layers
            names |= {f"{encoder}.text_model.encoder.layers.{b}.{c}" for b in range(layers) for c in COMFYUI_CLIP_LAYERS}
    return names


@pytest.mark.parametrize("build", ["sd", "sdxl"])
def test_every_key_of_the_native_file_has_a_form_comfyui_maps(build, tmp_path):
    """The native file's UNet keys were `unet.<module>.to_q.lora.down.weight`, a spelling ComfyUI maps for no SD 1.x /
    SDXL UNet module (0 of 128 loaded in SD 1.5): attention projections are written in the attention-processor spelling
    both ComfyUI and diffusers read, every adapted module appears, and diffusers still draws what the tool draws
    (`test_plain_diffusers_loads_the_folder_and_its_output_changes`, and the older-stack check in CI)."""
    from safetensors import safe_open

    from dreambooth.families.sd import build_tiny as build_tiny_sd
    from dreambooth.families.sdxl import build_tiny as build_tiny_sdxl
    from dreambooth.lora.files import save_lora

    build_tiny = {"sd": build_tiny_sd, "sdxl": build_tiny_sdxl}[build]
    pipe, parts = adapted(build_tiny, 4, 4.0)
    names = comfyui_module_names(build_tiny())  # the base's own modules, as ComfyUI's model has them
    with safe_open(str(save_lora(tmp_path, type(pipe), parts)), framework="pt") as f:
        keys = list(f.keys())
    unread = [k for k in keys if not any(k.endswith(e) and k.removesuffix(e) in names for e in COMFYUI_ENDINGS)]
    assert not unread, unread[:5]
    modules = {next(k.removesuffix(e) for e in COMFYUI_ENDINGS if k.endswith(e)) for k in keys}
    adapted_count = sum(1 for model in parts.values() for _, m in model.named_modules() if hasattr(m, "lora_A"))
    assert len(modules) == adapted_count and len(keys) == 2 * adapted_count
    assert any(".processor.to_out_lora." in k for k in keys)


@pytest.mark.slow
def test_a_file_with_either_text_encoder_spelling_loads_the_same(trained, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from dreambooth.families.sd import build_tiny as build_tiny_pipeline

    source = trained / "pytorch_lora_weights.safetensors"
    with safe_open(str(source), framework="pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    released = {k.replace("text_encoder.encoder.", "text_encoder.text_model.encoder."): v for k, v in state.items()}
    shortened = {k.replace("text_encoder.text_model.", "text_encoder."): v for k, v in state.items()}
    assert released != shortened
    drawn = []
    for name, tensors in (("released", released), ("shortened", shortened)):
        (tmp_path / name).mkdir()
        save_file(tensors, str(tmp_path / name / "pytorch_lora_weights.safetensors"), metadata=meta)
        ours, plain = build_tiny_pipeline(), build_tiny_pipeline()
        load_lora(ours, tmp_path / name)
        plain.load_lora_weights(str(tmp_path / name))
        assert plain.text_encoder.peft_config
        drawn += [outputs(ours), outputs(plain)]
    for other in drawn[1:]:
        assert_same(other, drawn[0])
    assert not torch.allclose(drawn[0]["text_encoder"], outputs(build_tiny_pipeline())["text_encoder"], atol=1e-3)


@pytest.mark.slow  # seconds of a whole run: the full suite keeps it, the fast lane does not
def test_alpha_other_than_rank_reaches_every_reader_at_the_trained_strength(tmp_path):
    """rank 4, alpha 6: the strength peft trained with, (alpha / rank) · up · down, whoever reads the files."""
    from safetensors.torch import load_file

    from dreambooth.families.sd import build_tiny as build_tiny_pipeline
    from dreambooth.lora.export import export_with
    from dreambooth.lora.files import KOHYA_NAME, WEIGHT_NAME, save_lora

    pipe, parts = adapted(build_tiny_pipeline, 4, 6.0)
    trained_strength = outputs(pipe)
    assert not torch.allclose(trained_strength["unet"], outputs(build_tiny_pipeline())["unet"], atol=1e-3)
    native = save_lora(tmp_path / "new", type(pipe), parts, {"alpha": 6.0, "rank": 4})
    (tmp_path / "old").mkdir()
    old = old_version_file(tmp_path / "old", parts, 6.0)

    assert_same(merged_by_tensors(native), trained_strength)  # the native file needs no alpha from its header
    for path in (native, old):
        ours, plain = build_tiny_pipeline(), build_tiny_pipeline()
        load_lora(ours, path)
        plain.load_lora_weights(str(path.parent), weight_name=path.name)
        assert_same(outputs(ours), trained_strength)
        assert_same(outputs(plain), trained_strength)

        kohya = export_with(build_tiny_pipeline(), path, "kohya")
        assert kohya.name == KOHYA_NAME
        alphas = {k: v.item() for k, v in load_file(str(kohya)).items() if k.endswith(".alpha")}
        assert len(alphas) == 40 and set(alphas.values()) == {6.0}  # the trained alpha, beside the trained weights
        assert_same(merged_by_tensors(kohya), trained_strength)
        from_kohya = build_tiny_pipeline()
        load_lora(from_kohya, kohya)
        assert_same(outputs(from_kohya), trained_strength)

    converted = export_with(build_tiny_pipeline(), old, "diffusers", output=str(tmp_path / "converted" / WEIGHT_NAME))
    assert_same(merged_by_tensors(converted), trained_strength)  # an earlier version's file, brought up to date
    plain = build_tiny_pipeline()
    plain.load_lora_weights(str(converted.parent))
    assert_same(outputs(plain), trained_strength)


def drawn(pipe) -> np.ndarray:
    from dreambooth.models import native_resolution
    from dreambooth.sampling import draw as draw_images

    pipe.set_progress_bar_config(disable=True)
    return np.stack(
        [
            np.asarray(i, dtype=np.float32)
            for i in draw_images(pipe, "a photo of sks dog", 1, 0, 3, 4.0, native_resolution(pipe), 1)
        ]
    )


@pytest.mark.parametrize(
    "model",
    [pytest.param(m, marks=pytest.mark.slow) for m in ("tiny", "tiny-sdxl", "tiny-flux", "tiny-sd3")],
)
def test_a_dora_lora_loads_in_plain_diffusers_and_draws_what_generate_draws(model, tmp_path, capsys):
    """--dora on every family: the file holds each adapted layer's magnitude, plain diffusers' load_lora_weights makes
    DoRA layers of it, and draws the very image our loader (what `generate` calls) draws."""
    from conftest import SAMPLE
    from safetensors import safe_open

    from dreambooth.lora.files import WEIGHT_NAME
    from dreambooth.models import load_pipeline

    out = train(
        TrainConfig(
            model=model,
            instance_dir=str(SAMPLE),
            instance_prompt="a photo of sks dog",
            output_dir=str(tmp_path / "run"),
            train_text_encoder=True,
            dora=True,
            rank=4,
            learning_rate=1e-2,
            text_encoder_lr=1e-2,
            max_steps=4,
            num_samples=0,
            lora_alpha=8,
        )  # fmt: skip
    )
    assert "DoRA LoRAs for diffusers only" in capsys.readouterr().out or model in ("tiny-flux", "tiny-sd3")
    assert not (out / "lora_kohya.safetensors").exists()
    with safe_open(str(out / WEIGHT_NAME), "pt") as f:
        magnitudes = [k for k in f.keys() if k.endswith(".lora_magnitude_vector.weight")]
        denoiser_name = "transformer" if model in ("tiny-flux", "tiny-sd3") else "unet"
        assert {k.split(".")[0] for k in magnitudes} >= {"text_encoder", denoiser_name}
    base = drawn(load_pipeline(model))
    plain = load_pipeline(model)
    plain.load_lora_weights(out)  # diffusers alone
    assert all(c.use_dora for c in getattr(plain, denoiser_name).peft_config.values())
    ours = load_pipeline(model)
    load_lora(ours, out)
    from_plain, from_ours = drawn(plain), drawn(ours)
    assert np.array_equal(from_plain, from_ours)
    assert np.abs(from_ours - base).mean() > 0.5  # of 255: the LoRA changed the drawing
