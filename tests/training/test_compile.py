"""--compile: the compile wrapper never reaches a saved file. The wrapper is the same whatever the backend, so the
tests compile with the `eager` backend: the wrapping without the minutes of code generation."""

import pytest
import torch
from safetensors.torch import load_file

import dreambooth.training.loop as train_mod
from dreambooth.config import GenerateConfig, TrainConfig
from dreambooth.generation import generate
from dreambooth.lora.files import WEIGHT_NAME

pytestmark = pytest.mark.slow  # a whole run and a generate: 8 s


def small(photos, out, **kw) -> TrainConfig:
    return TrainConfig(model="tiny", instance_dir=str(photos), instance_prompt="a photo of sks dog", output_dir=str(out),
                       train_text_encoder=True, rank=4, seed=3, **kw)  # fmt: skip


def test_compiled_run_saves_the_modules_own_names_and_generate_loads_it(photos, tmp_path, monkeypatch):
    compiled, real = [], torch.compile

    def eager_compile(model, **kw):
        compiled.append(model)
        return real(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    cfg = small(photos, tmp_path / "run", compile=True, max_steps=2, num_samples=0, checkpoint_every=1)
    out = train_mod.train(cfg)
    assert compiled, "the run asked for no compiled model"
    files = [out / WEIGHT_NAME, *sorted((out / "checkpoints").glob("step-*/state.safetensors"))]
    for path in files:
        wrapped = [k for k in load_file(str(path)) if "_orig_mod" in k]
        assert wrapped == [], f"{path.name} holds compile-wrapper names, e.g. {wrapped[:1]}"
    images = generate(GenerateConfig(lora=str(out), prompt="a photo of sks dog", num_images=1, steps=2,
                                     output_dir=str(tmp_path / "gen")))  # fmt: skip
    assert len(images) == 1
