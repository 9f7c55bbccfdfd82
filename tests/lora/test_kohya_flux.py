"""FLUX.1's kohya layout (sd-scripts' names, fused qkv and linear1): the maths of fusing, the released model's sizes
through diffusers' own reader, and the tiny model's file read back exactly."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from dreambooth.config import TrainConfig
from dreambooth.errors import UsageError
from dreambooth.families.flux import FAMILY
from dreambooth.families.flux import build_tiny as build_tiny_flux
from dreambooth.fields import settings
from dreambooth.lora.export import check_round_trip, normalised
from dreambooth.lora.kohya import fused_lora, split_fused, to_kohya, with_alphas
from dreambooth.training.loop import train

# FLUX.1 [dev]'s transformer: 19 joint and 38 single blocks, 24 heads of 128
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))  # fmt: skip


def test_a_fused_layer_applies_each_parts_update_and_nothing_else():
    torch.manual_seed(0)
    rank, alpha, width, sizes = 3, 5.0, 7, [4, 4, 6]
    parts = [(torch.randn(rank, width), torch.randn(size, rank)) for size in sizes]
    parts[1] = None  # a part the LoRA did not train
    down, up = fused_lora(parts, sizes)
    assert down.shape == (3 * rank, width) and up.shape == (sum(sizes), 3 * rank)
    x = torch.randn(width, 2, dtype=torch.float64)
    fused_update = (alpha * 3) / (rank * 3) * (up.double() @ (down.double() @ x))
    each = [alpha / rank * (p[1].double() @ (p[0].double() @ x)) if p else torch.zeros(s, 2) for p, s in zip(parts, sizes)]
    torch.testing.assert_close(fused_update, torch.cat(each).double(), rtol=1e-12, atol=1e-12)
    back = split_fused(down, up, sizes)
    assert torch.equal(back[0][0], parts[0][0]) and torch.equal(back[2][1], parts[2][1]) and not back[1][1].any()
    with pytest.raises(UsageError, match="not block-diagonal"):
        split_fused(down, up + 1, sizes)


def random_lora(model, names: tuple[str, ...], component: str, rank: int, seed: int) -> dict[str, torch.Tensor]:
    """A LoRA in the native layout on every linear layer of `model` whose path ends with one of `names`."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for path, layer in model.named_modules():
        if isinstance(layer, torch.nn.Linear) and path.endswith(names) and (component != "transformer" or "blocks." in path):
            out[f"{component}.{path}.lora.down.weight"] = torch.randn(rank, layer.in_features, generator=g)
            out[f"{component}.{path}.lora.up.weight"] = torch.randn(layer.out_features, rank, generator=g) / 8
    return out


@pytest.fixture(scope="module")
def flux_dev_shaped():
    """The tiny pipeline with a FLUX.1 [dev]-shaped transformer on the meta device: only the LoRA needs memory."""
    from diffusers import FluxTransformer2DModel

    pipe = build_tiny_flux()
    with torch.device("meta"):
        pipe.transformer = FluxTransformer2DModel(**FLUX_DEV)
    return pipe


@pytest.mark.slow
def test_the_released_models_kohya_file_reads_back_through_diffusers(flux_dev_shaped, tmp_path):
    pipe = flux_dev_shaped
    targets = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff.net.2",
               "proj_out")  # fmt: skip
    state = {**random_lora(pipe.transformer, targets, "transformer", 4, 0),
             **random_lora(pipe.text_encoder, ("q_proj", "v_proj"), "text_encoder", 4, 1)}  # fmt: skip
    meta = {"dreambooth.alpha": "8", "dreambooth.rank": "4"}
    weights, alphas = with_alphas(state, meta)
    tensors, header = to_kohya(weights, alphas, meta, FAMILY, "flux1-dev", pipe.transformer.config)
    assert header["ss_network_module"] == "networks.lora_flux" and header["ss_base_model_version"] == "flux1"
    assert tensors["lora_unet_double_blocks_18_img_attn_qkv.lora_up.weight"].shape == (3 * 3072, 12)
    assert tensors["lora_unet_double_blocks_18_img_attn_qkv.alpha"].item() == 24.0
    assert tensors["lora_unet_single_blocks_37_linear1.lora_up.weight"].shape == (3 * 3072 + 12288, 16)
    assert tensors["lora_unet_single_blocks_37_linear1.alpha"].item() == 32.0  # to_q, to_k, to_v and an empty proj_mlp
    for name in ("lora_unet_double_blocks_0_txt_attn_proj", "lora_unet_double_blocks_0_img_mlp_2",
                 "lora_unet_single_blocks_0_linear2",
                 "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"):  # fmt: skip
        assert tensors[f"{name}.alpha"].item() == 8.0
    written = tmp_path / "lora_kohya.safetensors"
    save_file(tensors, str(written), metadata=header)
    assert check_round_trip(written, pipe, weights, alphas) == "diffusers"

    # a file whose parts came out in the wrong order is caught
    key = "lora_unet_double_blocks_3_img_attn_qkv.lora_up.weight"
    up = tensors[key]
    tensors[key] = torch.cat([up[3072:6144], up[:3072], up[6144:]])
    save_file(tensors, str(written), metadata=header)
    with pytest.raises(UsageError, match=r"transformer_blocks\.3\.attn\.to_[qkv] applies another update"):
        check_round_trip(written, pipe, weights, alphas)


@pytest.mark.slow
def test_the_tiny_models_kohya_file_holds_the_trained_lora_exactly(photos, tmp_path, capsys):
    from dreambooth.lora.kohya import from_kohya
    from dreambooth.models import load_pipeline

    run = train(settings(TrainConfig, model="tiny-flux", instance_dir=str(photos), instance_prompt="a photo of sks dog",
                         output_dir=str(tmp_path / "run"), train_text_encoder=True, rank=4, lora_alpha=8,
                         learning_rate=1e-2, text_encoder_lr=1e-2, max_steps=2, num_samples=0,
                         ))  # fmt: skip
    out = capsys.readouterr().out
    assert "every one read back by this tool (diffusers reads FLUX.1 kohya files at the released model's sizes only)" in out
    assert out.strip().splitlines()[-1].endswith("lora_kohya.safetensors for ComfyUI, A1111 / Forge and sd-scripts")
    from dreambooth.lora.export import read_native

    pipe = load_pipeline("tiny-flux")
    state, meta = read_native(run / "pytorch_lora_weights.safetensors", pipe, allow_pickle=False)
    want, want_alphas = with_alphas(state, meta)
    got, got_alphas = from_kohya(load_file(str(run / "lora_kohya.safetensors")), FAMILY, pipe)
    got, want = normalised(got), normalised(want)  # (component, module, down/up), whichever key layout
    assert set(want) <= set(got) and all(torch.equal(got[k], v) for k, v in want.items())
    # what the LoRA did not train (the single blocks' MLP input) comes back as zeros
    assert {m for _, m, _ in set(got) - set(want)} == {"single_transformer_blocks.0.proj_mlp"}
    assert all(not got[k].any() for k in set(got) - set(want) if k[2] == "up")
    assert {(c, m.removeprefix("text_model.")): a for (c, m), a in got_alphas.items() if "proj_mlp" not in m} == {
        (c, m.removeprefix("text_model.")): a for (c, m), a in want_alphas.items()
    }

    # and it draws what the diffusers file draws
    from dreambooth.config import GenerateConfig
    from dreambooth.generation import generate

    images = {}
    for name in ("pytorch_lora_weights.safetensors", "lora_kohya.safetensors"):
        out = tmp_path / name
        generate(settings(GenerateConfig, model="tiny-flux", lora=str(run / name), prompt="a photo of sks dog",
                          num_images=1, steps=2, seed=0, output_dir=str(out)))  # fmt: skip
        images[name] = np.asarray(Image.open(next(out.glob("*.png"))))
    assert np.array_equal(images["pytorch_lora_weights.safetensors"], images["lora_kohya.safetensors"])


def test_a_module_without_a_kohya_name_stops_the_run_before_training(photos, tmp_path, capsys):
    from dreambooth.cli import main

    args = ["train", "--model", "tiny-flux", "--instance-dir", str(photos), "--instance-prompt", "a photo of sks dog",
            "--rank", "2", "--max-steps", "1", "--num-samples", "0", "--target-modules", "all-linear",
            "--output-dir", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dreambooth: error")]
    assert err == [
        "dreambooth: error: transformer module 'time_text_embed.timestep_embedder.linear_1' has no kohya name this tool writes; train with "
        "--target-modules attention, attention-mlp or names of the blocks' layers to export, or pass --export none"
    ]
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert main([*args[:-1], str(tmp_path / "none"), "--export", "none"]) == 0
