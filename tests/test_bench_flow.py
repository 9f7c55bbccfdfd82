"""bench/flow_speed.py gives both tools the same FLUX.1 / SD3.5 job: our command read by the tool's own parser, the
script's flags as diffusers' scripts read them."""

import sys
from pathlib import Path

import pytest

from dreambooth.cli import build_parser, config_from_args
from dreambooth.config import TrainConfig
from dreambooth.families import flux, sd3

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import flow_speed  # noqa: E402


def job(argv):
    args = flow_speed.parse_args(["--model-dir", "m", *argv])
    ours = flow_speed.our_command(args, Path("m"), Path("out"))
    cfg = config_from_args(TrainConfig, build_parser().parse_args(ours[ours.index("train") :]))
    args.tool, args.script, args.python = "theirs", "train_dreambooth_lora_flux.py", "python"
    theirs = flow_speed.their_command(args, Path("m"), Path("out"))
    flags, i = {}, theirs.index("--pretrained_model_name_or_path")
    while i < len(theirs):
        value = theirs[i + 1] if i + 1 < len(theirs) and not theirs[i + 1].startswith("--") else True
        flags[theirs[i].lstrip("-")] = value
        i += 1 if value is True else 2
    return cfg, flags


@pytest.mark.parametrize("shape, seq, weighting, guidance", [("flux", 512, "none", 3.5), ("sd35", 77, "logit_normal", None)])
def test_both_tools_get_the_same_job(shape, seq, weighting, guidance):
    cfg, theirs = job(["--shape", shape, "--tool", "ours", "--device", "cuda", "--steps", "25", "--batch", "2"])
    assert (cfg.resolution, cfg.batch_size, cfg.max_steps, cfg.rank, cfg.lora_alpha) == (1024, 2, 25, 16, 16.0)
    assert (cfg.learning_rate, cfg.lr_scheduler, cfg.seed, cfg.center_crop) == (1e-4, "constant", 0, True)
    assert (cfg.mixed_precision.value, cfg.max_sequence_length, cfg.weighting_scheme) == ("bf16", seq, weighting)
    assert not cfg.with_prior_preservation and not cfg.train_text_encoder and cfg.base_quantization == "none"
    assert (cfg.num_samples, cfg.export) == (0, "none")  # nothing drawn or converted after training
    # the script: the same values under its names, and the tool's default targets spelled out
    assert theirs["resolution"] == "1024" and theirs["train_batch_size"] == "2" and theirs["max_train_steps"] == "25"
    assert theirs["rank"] == "16" and float(theirs["learning_rate"]) == cfg.learning_rate
    assert theirs["lr_scheduler"] == "constant" and theirs["seed"] == "0" and theirs["center_crop"] is True
    assert theirs["mixed_precision"] == "bf16" and theirs["max_sequence_length"] == str(seq)
    assert theirs["weighting_scheme"] == weighting and theirs["cache_latents"] is True
    family = {"flux": flux.FAMILY, "sd35": sd3.FAMILY}[shape]
    assert cfg.target_modules == [] and theirs["lora_layers"].split(",") == list(family.denoiser_targets)  # our default
    assert "with_prior_preservation" not in theirs and "train_text_encoder" not in theirs
    if guidance is None:
        assert "guidance_scale" not in theirs
    else:
        assert cfg.training_guidance == guidance and float(theirs["guidance_scale"]) == guidance
        assert theirs["lora_alpha"] == "16"  # FLUX.1's script defaults to 4


def test_tiny_job_and_quantized_base():
    cfg, theirs = job(["--shape", "flux", "--tool", "ours", "--quick"])  # on the CPU: the tiny model
    assert (cfg.resolution, cfg.max_steps, cfg.max_sequence_length, cfg.mixed_precision.value) == (64, 20, 32, "no")
    assert (theirs["resolution"], theirs["max_sequence_length"], theirs["mixed_precision"]) == ("64", "32", "no")
    cfg, _ = job(["--shape", "flux", "--tool", "ours", "--device", "cuda", "--base-quantization", "nf4"])
    assert cfg.base_quantization == "nf4"
    for argv in (["--tool", "ours"], ["--tool", "theirs", "--script", "s.py", "--device", "cuda"]):
        with pytest.raises(SystemExit):  # CUDA only, ours only
            flow_speed.parse_args(["--model-dir", "m", "--shape", "flux", "--base-quantization", "nf4", *argv])
