"""LoKr and LoHa (--adapter lokr|loha): trained through peft, saved, written in LyCORIS' kohya-style layout, read back
by this tool and loaded from either file to draw the same images."""

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dreambooth.config import TrainConfig
from dreambooth.families.sd import build_tiny as build_tiny_pipeline
from dreambooth.families.sdxl import build_tiny as build_tiny_sdxl_pipeline
from dreambooth.lora.files import load_lora
from dreambooth.sampling import draw as sampling_draw
from dreambooth.sampling import grid
from dreambooth.training.loop import train


def draw(pipe):
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a photo of sks dog", num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")
    return image.images[0]


def trained(photos, tmp_path, adapter, **extra):
    settings = dict(
        model="tiny",
        instance_dir=str(photos),
        instance_prompt="a photo of sks dog",
        output_dir=str(tmp_path / adapter),
        train_text_encoder=True,
        adapter=adapter,
        rank=4,
        lora_alpha=8,
        learning_rate=1e-2,
        text_encoder_lr=1e-2,
        max_steps=3,
        num_samples=2,
        sample_steps=3,
    )
    return train(TrainConfig(**{**settings, **extra}))


@pytest.mark.parametrize(
    "adapter, extra",
    [
        pytest.param("lokr", {}, marks=pytest.mark.slow),
        pytest.param("loha", {}, marks=pytest.mark.slow),
        pytest.param("lokr", {"lokr_factor": 4, "rank": 2}, marks=pytest.mark.slow),
        pytest.param("loha", {"model": "tiny-sdxl"}, marks=pytest.mark.slow),
    ],
)
def test_each_adapter_trains_saves_exports_and_draws_the_same_from_both_files(adapter, extra, photos, tmp_path):
    model = extra.get("model", "tiny")
    build = build_tiny_sdxl_pipeline if model == "tiny-sdxl" else build_tiny_pipeline
    run = trained(photos, tmp_path, adapter, **extra)
    native = load_file(str(run / "pytorch_lora_weights.safetensors"))
    kohya = load_file(str(run / "lora_kohya.safetensors"))
    factor = {"lokr": ".lokr_w", "loha": ".hada_w"}[adapter]
    assert native and all(factor in k for k in native)
    encoders = ("lora_te1_", "lora_te2_") if model == "tiny-sdxl" else ("lora_te_",)
    assert all(k.startswith(("lora_unet_", *encoders)) for k in kohya)
    assert all(any(k.startswith(f"{p}text_model_encoder_layers_0_self_attn_q_proj.") for k in kohya) for p in encoders)
    if model == "tiny-sdxl":  # the original UNet's names, as sd-scripts writes them
        assert any(k.startswith("lora_unet_input_blocks_") for k in kohya)
    assert {k.rpartition(".")[2] for k in kohya} >= (
        {"lokr_w1", "alpha"} if adapter == "lokr" else {"hada_w1_a", "hada_w2_b", "alpha"}
    )
    with safe_open(str(run / "lora_kohya.safetensors"), framework="pt") as f:
        assert f.metadata()["ss_network_module"] == "lycoris.kohya"
    card = (run / "README.md").read_text()
    assert "LyCORIS' layout" in card and "load_lora_weights` does not read" in card

    base = draw(build())
    images = []
    for name in ("pytorch_lora_weights.safetensors", "lora_kohya.safetensors"):
        pipe = build()
        load_lora(pipe, run / name)
        images.append(draw(pipe))
    assert np.allclose(images[0], images[1], atol=1e-5)
    assert np.abs(images[0] - base).mean() > 1e-4  # the adapter does something

    # the file draws what the trained model drew at the end of training (its samples.png)
    from PIL import Image

    pipe = build()
    load_lora(pipe, run / "lora_kohya.safetensors")
    cfg = TrainConfig(model=model)
    again = grid(sampling_draw(pipe, "a photo of sks dog", 2, 0, 3, cfg.guidance_scale, 64, 4))
    drawn = np.asarray(Image.open(run / "samples.png"), dtype=np.int16)
    assert np.abs(np.asarray(again, dtype=np.int16) - drawn).max() <= 1


def lycoris_update(factors: dict[str, torch.Tensor], alpha: float) -> torch.Tensor:
    """A module's update as the format's author defines it (LyCORIS' LokrModule / LohaModule, which ComfyUI and
    A1111 / Forge follow): alpha / dim times the factors' product, dim the inner size of the rank-decomposed factor
    (`lokr_w2_b`, else `lokr_w1_b`; `hada_w1_b`), and a LoKr of two full factors at scale 1 whatever its alpha.
    Written from that definition, not from this tool's reader, so that writer and reader cannot agree on a wrong
    scale unnoticed."""
    f = {k: v.double() for k, v in factors.items()}
    if "hada_w1_a" in f:
        return alpha / f["hada_w1_b"].shape[0] * (f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"])
    w1 = f["lokr_w1"] if "lokr_w1" in f else f["lokr_w1_a"] @ f["lokr_w1_b"]
    w2 = f["lokr_w2"] if "lokr_w2" in f else f["lokr_w2_a"] @ f["lokr_w2_b"]
    dim = next((f[p].shape[0] for p in ("lokr_w2_b", "lokr_w1_b") if p in f), None)
    return (alpha / dim if dim else 1.0) * torch.kron(w1, w2)


@pytest.mark.parametrize("adapter, rank, factor", [("lokr", 4, -1), ("lokr", 2, 4), ("loha", 4, -1)])
def test_each_module_of_the_lycoris_file_applies_peft_s_update_by_the_format_s_definition(adapter, rank, factor, tmp_path):
    from dreambooth.families import family_of
    from dreambooth.lora.adapter import add_lora
    from dreambooth.lora.export import export_with
    from dreambooth.lora.files import save_lora
    from dreambooth.lora.kohya import kohya_names_of

    pipe = build_tiny_pipeline()
    add_lora(pipe.unet, rank, 8.0, 0.0, ["to_q", "to_k", "to_v", "to_out.0"], kind=adapter, lokr_factor=factor)
    torch.manual_seed(1)
    for p in pipe.unet.parameters():
        if p.requires_grad:  # every factor non-zero, as after training (peft starts one at zero)
            p.data.normal_()
    save_lora(tmp_path, type(pipe), {"unet": pipe.unet})
    kohya = load_file(
        str(export_with(build_tiny_pipeline(), tmp_path / "pytorch_lora_weights.safetensors", "kohya", model="tiny"))
    )
    layers = kohya_names_of(family_of(pipe), pipe)
    kinds = set()
    for name in {k.partition(".")[0] for k in kohya}:
        factors = {k.partition(".")[2]: v for k, v in kohya.items() if k.startswith(f"{name}.") and not k.endswith(".alpha")}
        with torch.no_grad():
            trained = pipe.unet.get_submodule(layers[name][1]).get_delta_weight("default").double()
        got = lycoris_update(factors, float(kohya[f"{name}.alpha"])).reshape(trained.shape)
        assert torch.allclose(got, trained, rtol=1e-5, atol=1e-6 * float(trained.abs().max())), name
        kinds.add("hada" if "hada_w1_a" in factors else "full" if {"lokr_w1", "lokr_w2"} <= set(factors) else "decomposed")
    # alpha 8 != rank, so each scale rule is exercised: tiny's LoKr factors are both full at rank 4 (alpha / rank
    # folded into lokr_w1), its second factor decomposed at rank 2 and factor 4 (alpha / rank applied by readers)
    assert kinds == ({"hada"} if adapter == "loha" else {"full"} if rank == 4 else {"decomposed"})


def test_flux_kohya_export_of_a_lokr_is_refused_in_one_line_before_training(photos, tmp_path, capsys):
    from dreambooth.cli import main

    out = tmp_path / "run"
    argv = ["train", "--model", "tiny-flux", "--instance-dir", str(photos), "--instance-prompt", "a photo of sks dog",
            "--output-dir", str(out), "--adapter", "lokr", "--export", "kohya", "--max-steps", "1"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--export kohya: FLUX.1's kohya layout fuses q, k and v" in err
    assert "cannot be written exactly" in err and not (out / "checkpoints").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--adapter", "lokr", "--dora"], "--dora: DoRA is a kind of LoRA; with --adapter lokr drop --dora"),
        (["--adapter", "loha", "--lora-dropout", "0.1"], "--lora-dropout 0.1: not with --adapter loha"),
        (["--lokr-factor", "4"], "--lokr-factor 4: only with --adapter lokr"),
        (["--adapter", "lokr", "--lokr-factor", "1"], "--lokr-factor 1: must be -1"),
        (["--adapter", "lycoris"], "--adapter"),
    ],
)
def test_adapter_settings_that_do_not_go_together_are_one_line(flags, message, photos, tmp_path, capsys):
    from dreambooth.cli import main

    argv = ["train", "--model", "tiny", "--instance-dir", str(photos), "--instance-prompt", "a photo of sks dog",
            "--output-dir", str(tmp_path / "run"), *flags]  # fmt: skip
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's refusal of a value outside the choices
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "Traceback" not in err


def test_a_lokr_file_for_another_model_is_refused_in_one_line(photos, tmp_path):
    from dreambooth.errors import UsageError

    run = trained(photos, tmp_path, "lokr", num_samples=0)
    with pytest.raises(UsageError, match="made for a sd model, but --model tiny-sdxl is SDXL"):
        load_lora(build_tiny_sdxl_pipeline(), run, model="tiny-sdxl")
    # a file without this tool's header (as another program might keep it): the layer names tell
    save_file(load_file(str(run / "lora_kohya.safetensors")), str(tmp_path / "bare.safetensors"))
    with pytest.raises(UsageError, match=r"LoKr / LoHa key 'lora_(te|unet)_.*' names no layer of this SDXL model"):
        load_lora(build_tiny_sdxl_pipeline(), tmp_path / "bare.safetensors", model="tiny-sdxl")
