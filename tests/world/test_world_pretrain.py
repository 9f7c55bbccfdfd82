import json

import pytest
import torch

from dreambooth.errors import UsageError
from dreambooth.models import describe, load_pipeline
from dreambooth.world import PretrainWorldConfig
from dreambooth.world.pretrain import pretrain_world, step_data


def small(tmp_path, **kw):
    settings = dict(output_dir=str(tmp_path / "run"), autoencoder_steps=2, diffusion_steps=2, reader_steps=2, batch_size=4,
                    reader_check_renders=64)  # fmt: skip
    return PretrainWorldConfig(**{**settings, **kw})


@pytest.mark.slow
def test_pretraining_writes_a_diffusers_pipeline_with_its_reader_and_recipe(tmp_path, capsys):
    folder = pretrain_world(small(tmp_path))
    pipe = load_pipeline(str(folder))  # the same loader users call with --model
    info = describe(pipe)
    assert info.prediction_type == "v_prediction" and info.native_resolution == 32
    assert pipe.tokenizer.model_max_length == 20 and pipe.tokenizer("sks").input_ids[1] == 48136
    assert pipe.unet.dtype == torch.float32  # stored in fp16, trained on in fp32
    sizes = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    assert sizes < 20e6, sizes
    reader = json.loads((folder / "reader" / "reader.json").read_text())
    assert set(reader["accuracy"]["artefacts"]) == {"cls", "colour", "pattern", "context"}
    assert "dreambooth pretrain-world --output-dir OUT --seed 0 --autoencoder-steps 2" in (folder / "MADE_BY.md").read_text()
    assert not [p for p in folder.rglob("*.json") if str(tmp_path) in p.read_text()]  # no path of this machine
    image = pipe("a photo of a dog", num_inference_steps=2, guidance_scale=2.0).images[0]
    assert image.size == (32, 32)


@pytest.mark.slow
def test_a_longer_run_resumes_from_the_last_diffusion_checkpoint(tmp_path, capsys):
    pretrain_world(small(tmp_path))
    capsys.readouterr()
    pretrain_world(small(tmp_path, diffusion_steps=3))
    out = capsys.readouterr().out
    assert "resuming the diffusion stage from step-000002" in out
    assert (tmp_path / "run" / "checkpoints" / "step-000003").is_dir()
    with pytest.raises(UsageError, match=r"other settings \(--seed 0 then, 5 now\)"):  # another run's checkpoints
        pretrain_world(small(tmp_path, diffusion_steps=4, seed=5))


def test_each_step_sees_the_same_renders_and_captions_whenever_it_runs():
    a, b = step_data(0, 7, 8), step_data(0, 7, 8)
    assert (a[0] == b[0]).all() and a[1] == b[1]
    assert a[1] != step_data(0, 8, 8)[1]
    assert any(c == "" for s in range(20) for c in step_data(0, s, 8)[1])  # empty captions for guidance
