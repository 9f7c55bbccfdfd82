"""kohya export (SD 1.x and SDXL) checked through diffusers' own loader; cloneofsimo/lora files brought along."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dreambooth.config import ExportConfig, TrainConfig
from dreambooth.errors import UsageError
from dreambooth.families.sd import build_tiny as build_tiny_pipeline
from dreambooth.families.sdxl import build_tiny as build_tiny_sdxl_pipeline
from dreambooth.lora.cloneofsimo import convert
from dreambooth.lora.export import check_round_trip, export, read_native
from dreambooth.lora.files import load_lora
from dreambooth.training.loop import train


def draw(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe("a photo of sks dog", num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images[
        0
    ]


@pytest.mark.parametrize(
    "model, build",
    [
        pytest.param("tiny", build_tiny_pipeline, marks=pytest.mark.slow),
        pytest.param("tiny-sdxl", build_tiny_sdxl_pipeline, marks=pytest.mark.slow),
    ],
)
def test_kohya_export_reads_back_fully_and_draws_the_same(model, build, photos, tmp_path):
    run = train(
        TrainConfig(
            model=model,
            instance_dir=str(photos),
            instance_prompt="a photo of sks dog",
            output_dir=str(tmp_path / "run"),
            train_text_encoder=True,
            rank=4,
            lora_alpha=8,
            learning_rate=1e-2,
            text_encoder_lr=1e-2,
            max_steps=4,
            num_samples=0,
            export="kohya",
        )
    )
    kohya = load_file(str(run / "lora_kohya.safetensors"))
    assert all(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in kohya)
    if model == "tiny-sdxl":
        assert any(k.startswith("lora_unet_input_blocks_") for k in kohya) and any(k.startswith("lora_te2_") for k in kohya)
    assert all(v.item() == 8.0 for k, v in kohya.items() if k.endswith(".alpha"))
    from safetensors import safe_open

    with safe_open(str(run / "lora_kohya.safetensors"), framework="pt") as f:
        header = f.metadata()
    # the family names the generation as sd-scripts does (the embedded tiny model is SD 1.x-shaped)
    assert header["ss_base_model_version"] == {"tiny": "sd_v1", "tiny-sdxl": "sdxl_base_v1-0"}[model]
    assert header["ss_v2"] == "False" and header["dreambooth.family"] == {"tiny": "sd", "tiny-sdxl": "sdxl"}[model]

    native, exported = build(), build()
    load_lora(native, run)
    exported.load_lora_weights(str(run), weight_name="lora_kohya.safetensors")
    a, b = draw(native), draw(exported)
    assert np.allclose(a, b, atol=1e-5)
    assert np.abs(a - draw(build())).mean() > 1e-4  # and the LoRA does something


@pytest.mark.slow
def test_round_trip_check_catches_dropped_weights(photos, tmp_path):
    run = train(
        TrainConfig(
            model="tiny",
            instance_dir=str(photos),
            instance_prompt="a photo of sks dog",
            output_dir=str(tmp_path / "run"),
            rank=2,
            max_steps=1,
            num_samples=0,
            export="kohya",
        )
    )
    native = load_file(str(run / "pytorch_lora_weights.safetensors"))
    native["unet.mid_block.attentions.0.transformer_blocks.0.ff.net.2.lora.down.weight"] = torch.zeros(2, 64)
    native["unet.mid_block.attentions.0.transformer_blocks.0.ff.net.2.lora.up.weight"] = torch.zeros(64, 2)
    with pytest.raises(UsageError, match="2 weights lost"):
        check_round_trip(run / "lora_kohya.safetensors", build_tiny_pipeline(), native)


# The order cloneofsimo/lora injected (and so saved) the tiny UNet's layers in, written out by hand:
# down blocks, then up blocks, then the mid block; in each transformer block attn1, ff (GEGLU), attn2.
TINY_ORDER = [
    f"{block}.transformer_blocks.0.{layer}"
    for block in ["down_blocks.1.attentions.0", "up_blocks.0.attentions.0", "up_blocks.0.attentions.1", "mid_block.attentions.0"]
    for layer in [
        "attn1.to_q",
        "attn1.to_k",
        "attn1.to_v",
        "attn1.to_out.0",
        "ff.net.0.proj",
        "attn2.to_q",
        "attn2.to_k",
        "attn2.to_v",
        "attn2.to_out.0",
    ]
]
TE_ORDER = [f"text_model.encoder.layers.{i}.self_attn.{p}" for i in range(2) for p in ["k_proj", "v_proj", "q_proj", "out_proj"]]


def old_layout_fixture(tmp_path, fmt: str):
    """A LoRA as cloneofsimo/lora's script saved it, and the same weights keyed by module for reference."""
    from dreambooth.lora.adapter import find_module

    pipe, g = build_tiny_pipeline(), torch.Generator().manual_seed(0)
    reference, pairs = {}, {"unet": [], "text_encoder": []}
    for component, order in (("unet", TINY_ORDER), ("text_encoder", TE_ORDER)):
        for module in order:
            layer = find_module(getattr(pipe, component), module)
            down = torch.randn(2, layer.in_features, generator=g) * 0.3
            up = torch.randn(layer.out_features, 2, generator=g) * 0.3
            pairs[component].append((up, down))
            reference[f"{component}.{module.removeprefix('text_model.')}.lora_A.weight"] = down
            reference[f"{component}.{module.removeprefix('text_model.')}.lora_B.weight"] = up
    if fmt == "safetensors":
        tensors, meta = (
            {},
            {"unet": json.dumps(["CrossAttention", "Attention", "GEGLU"]), "text_encoder": json.dumps(["CLIPAttention"])},
        )
        for component, items in pairs.items():
            for i, (up, down) in enumerate(items):
                tensors[f"{component}:{i}:up"], tensors[f"{component}:{i}:down"] = up, down
                meta[f"{component}:{i}:rank"] = "2"
        save_file(tensors, str(tmp_path / "lora_weight.safetensors"), metadata=meta)
        return tmp_path / "lora_weight.safetensors", reference
    torch.save([t for up, down in pairs["unet"] for t in (up, down)], tmp_path / "lora_weight.pt")
    torch.save([t for up, down in pairs["text_encoder"] for t in (up, down)], tmp_path / "lora_weight.text_encoder.pt")
    return tmp_path / "lora_weight.pt", reference


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_cloneofsimo_files_map_to_the_right_modules(fmt, tmp_path):
    path, reference = old_layout_fixture(tmp_path, fmt)
    state = convert(path, build_tiny_pipeline(), allow_pickle=True)
    got = {k.replace("text_encoder.text_model.", "text_encoder."): v for k, v in state.items()}
    assert got.keys() == reference.keys()
    assert all(torch.equal(got[k], reference[k]) for k in reference)

    ref_file = tmp_path / "reference.safetensors"
    save_file(reference, str(ref_file))
    direct, converted = build_tiny_pipeline(), build_tiny_pipeline()
    direct.load_lora_weights(str(tmp_path), weight_name="reference.safetensors")
    load_lora(converted, path, allow_pickle=True)
    assert np.allclose(draw(direct), draw(converted), atol=1e-5)


def test_old_pt_needs_the_pickle_flag_and_export_converts_it(tmp_path, capsys):
    path, reference = old_layout_fixture(tmp_path, "pt")
    with pytest.raises(UsageError, match="--allow-pickle"):
        load_lora(build_tiny_pipeline(), path)
    out = export(ExportConfig(lora=str(path), format="diffusers", model="tiny", allow_pickle=True))
    assert out.name == "pytorch_lora_weights.safetensors"
    pipe = build_tiny_pipeline()
    pipe.load_lora_weights(str(out.parent))
    assert pipe.unet.peft_config and pipe.text_encoder.peft_config


def test_old_file_for_another_model_is_refused(tmp_path):
    path, _ = old_layout_fixture(tmp_path, "safetensors")
    with pytest.raises(UsageError, match="this model has"):
        convert(path, build_tiny_sdxl_pipeline())


# ---------------------------------------------------------------- the file for ComfyUI / A1111 / Forge, by default


def test_a_run_writes_both_files_by_default_and_says_which_is_for_what(photos, tmp_path, capsys):
    from dreambooth.cli import main

    code = main(["train", "--instance-dir", str(photos), "--instance-prompt", "a photo of sks dog",
                 "--output-dir", str(tmp_path / "run"), "--rank", "2", "--max-steps", "1", "--num-samples", "0"])  # fmt: skip
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert (tmp_path / "run" / "pytorch_lora_weights.safetensors").is_file() and (
        tmp_path / "run" / "lora_kohya.safetensors"
    ).is_file()
    assert out[-1].endswith(
        "pytorch_lora_weights.safetensors for diffusers, lora_kohya.safetensors for ComfyUI, A1111 / Forge and sd-scripts"
    )
    card = (tmp_path / "run" / "README.md").read_text()
    assert "| `lora_kohya.safetensors` | ComfyUI" in card and "| `pytorch_lora_weights.safetensors` | diffusers" in card
    assert "export: kohya" in (tmp_path / "run" / "config.yaml").read_text()  # what the default became, written down

    code = main(["train", "--instance-dir", str(photos), "--instance-prompt", "a photo of sks dog", "--export", "none",
                 "--output-dir", str(tmp_path / "none"), "--rank", "2", "--max-steps", "1", "--num-samples", "0"])  # fmt: skip
    assert code == 0 and not (tmp_path / "none" / "lora_kohya.safetensors").exists()
    assert (
        capsys.readouterr()
        .out.strip()
        .splitlines()[-1]
        .endswith("LoRA saved to " + str(tmp_path / "none") + ": pytorch_lora_weights.safetensors for diffusers")
    )
    assert (
        "`dreambooth export --lora path/to/this/folder` writes `lora_kohya.safetensors`"
        in (tmp_path / "none" / "README.md").read_text()
    )


@pytest.fixture
def no_kohya_layout(monkeypatch):
    """SD as a family whose kohya export is not written yet would be: its `kohya_prefixes` left empty."""
    import dataclasses

    import dreambooth.families as families
    from dreambooth.families.sd import FAMILY

    family = dataclasses.replace(FAMILY, kohya_prefixes={})
    monkeypatch.setattr(families, "all_families", lambda: [family])
    return family


@pytest.mark.slow
def test_a_family_without_a_kohya_layout_writes_the_diffusers_file_with_a_note(no_kohya_layout, photos, tmp_path, capsys):
    from dreambooth.cli import main

    args = ["train", "--instance-dir", str(photos), "--instance-prompt", "a photo of sks dog", "--rank", "2", "--max-steps", "1",
            "--num-samples", "0"]  # fmt: skip
    assert main([*args, "--output-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert sorted(p.name for p in (tmp_path / "run").glob("*.safetensors")) == ["pytorch_lora_weights.safetensors"]
    assert (
        out[-2]
        == "note: no file in the kohya layout (A1111 / Forge, sd-scripts): this tool does not write Stable Diffusion 1.x/2.x LoRAs in it yet"
    )
    assert out[-1].endswith(": pytorch_lora_weights.safetensors for diffusers")
    assert "No file in the kohya layout (A1111 / Forge, sd-scripts)" in (tmp_path / "run" / "README.md").read_text()

    assert main([*args, "--export", "kohya", "--output-dir", str(tmp_path / "asked")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert err == [
        "dreambooth: error: --export kohya: this tool does not write Stable Diffusion 1.x/2.x LoRAs in the kohya layout yet; "
        "pass --export none (pytorch_lora_weights.safetensors, for diffusers, is written either way)"
    ]
    assert not (tmp_path / "asked" / "checkpoints").exists()  # refused before training
    assert main(["export", "--lora", str(tmp_path / "run")]) == 2 and "--export kohya" in capsys.readouterr().err


@pytest.mark.slow
def test_round_trip_check_catches_a_lost_alpha(photos, tmp_path):
    run = train(
        TrainConfig(
            model="tiny",
            instance_dir=str(photos),
            instance_prompt="a photo of sks dog",
            output_dir=str(tmp_path / "run"),
            rank=2,
            lora_alpha=4,
            max_steps=1,
            num_samples=0,
        )
    )
    from dreambooth.lora.kohya import with_alphas

    weights, alphas = with_alphas(*read_native(run / "pytorch_lora_weights.safetensors", build_tiny_pipeline(), False))
    kohya = load_file(str(run / "lora_kohya.safetensors"))
    check_round_trip(run / "lora_kohya.safetensors", build_tiny_pipeline(), weights, alphas)
    dropped = next(k for k in kohya if k.startswith("lora_unet_") and k.endswith(".alpha"))
    save_file({k: v for k, v in kohya.items() if k != dropped}, str(tmp_path / "lost.safetensors"))
    with pytest.raises(UsageError, match=r"the alpha of unet\..* came back from diffusers' loader as None instead of 4.0"):
        check_round_trip(tmp_path / "lost.safetensors", build_tiny_pipeline(), weights, alphas)


def test_kohya_with_dora_is_refused_in_one_line_before_training(photos, tmp_path, capsys):
    from dreambooth.cli import main

    out = tmp_path / "run"
    argv = ["train", "--model", "tiny", "--instance-dir", str(photos), "--instance-prompt", "a photo of sks dog",
            "--output-dir", str(out), "--dora", "--export", "kohya", "--max-steps", "1"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--export kohya: DoRA LoRAs are not written in the kohya layout" in err and "Traceback" not in err
    assert not (out / "checkpoints").exists()

    # without --export the run writes the diffusers file alone, and says so; exporting it to kohya is refused too
    assert main([*argv[:-4], "--max-steps", "1", "--num-samples", "0"]) == 0
    assert "DoRA LoRAs for diffusers only" in capsys.readouterr().out and not (out / "lora_kohya.safetensors").exists()
    assert main(["export", "--lora", str(out), "--format", "kohya"]) == 2
    err = capsys.readouterr().err
    assert "is a DoRA LoRA" in err and "--format diffusers" in err and not (out / "lora_kohya.safetensors").exists()
