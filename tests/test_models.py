import pytest
import torch

from dreambooth.errors import UsageError
from dreambooth.families.sd import build_tiny as build_tiny_pipeline
from dreambooth.models import describe, load_pipeline


def test_tiny_is_deterministic_and_described():
    a, b = build_tiny_pipeline(), build_tiny_pipeline()
    for m in ("unet", "vae", "text_encoder"):
        assert all(torch.equal(x, y) for x, y in zip(getattr(a, m).state_dict().values(), getattr(b, m).state_dict().values()))
    info = describe(a)
    assert (info.family.name, info.version, info.prediction_type, info.native_resolution) == ("sd", "", "epsilon", 64)
    named = describe(load_pipeline("tiny-v"), "tiny-v")
    assert (named.version, named.prediction_type) == ("tiny-v", "v_prediction")


def test_local_diffusers_folder_loads_with_its_prediction_type(tiny_base, tmp_path):
    pipe = load_pipeline(str(tiny_base))
    assert describe(pipe).prediction_type == "epsilon"
    ref = build_tiny_pipeline()
    assert torch.equal(pipe.unet.conv_in.weight, ref.unet.conv_in.weight)
    v = tmp_path / "tiny-v"
    build_tiny_pipeline("v_prediction").save_pretrained(v)
    assert describe(load_pipeline(str(v))).prediction_type == "v_prediction"


def test_offline_hub_id_gives_one_line_with_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match="not found on the hub.*local path with --model"):
        load_pipeline("nobody-here/not-a-real-model-xyz")


def test_bad_model_paths(tmp_path):
    with pytest.raises(UsageError, match="no model_index.json"):
        load_pipeline(str(tmp_path))
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"\x80\x04")
    with pytest.raises(UsageError, match="pickle"):
        load_pipeline(str(pickle))
    with pytest.raises(UsageError, match="no such file or folder"):
        load_pipeline(str(tmp_path / "nope" / "model"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"garbage")
    with pytest.raises(UsageError, match="junk.safetensors"):
        load_pipeline(str(junk))


def test_another_vae_from_a_local_folder(tmp_path):
    from diffusers import AutoencoderKL

    from dreambooth.models import load_vae

    torch.manual_seed(5)
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=32,
    )
    vae.save_pretrained(tmp_path / "vae")
    loaded = load_vae(str(tmp_path / "vae"))
    assert torch.equal(loaded.encoder.conv_in.weight, vae.encoder.conv_in.weight)
    with pytest.raises(UsageError, match="--vae"):
        load_vae(str(tmp_path / "nothing-here"))


def test_zero_terminal_snr_schedule_trains_toward_v(tmp_path):
    """SD 2.x-v with a zero-terminal-SNR schedule: at the last timestep the latent is pure noise, so v = -x0."""
    from diffusers import DDPMScheduler

    from dreambooth.objectives.ddpm import training_target

    pipe = build_tiny_pipeline("v_prediction")
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config, rescale_betas_zero_snr=True)  # as the model ships it
    sched = DDPMScheduler.from_config(pipe.scheduler.config)  # what training builds from the model's config
    assert sched.alphas_cumprod[-1] < 1e-6
    latents, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    target = training_target(sched, latents, noise, torch.tensor([999]))
    assert torch.allclose(target, -latents, atol=1e-3)
