"""The demo report's validation section, from a run's files (the whole demo is tested in test_world_demo.py)."""

import json

import torch
from PIL import Image
from safetensors.torch import save

from dreambooth import atomic
from dreambooth.world.demo import kept_words, validation_section


def test_the_report_shows_the_validation_curves_and_the_kept_step(tmp_path):
    validation = tmp_path / "lora" / "validation"
    assert validation_section(tmp_path, kept_words(tmp_path / "lora", 1000)) == ""  # nothing validated, nothing shown
    validation.mkdir(parents=True)
    for name in ("loss.png", "scores.png"):
        Image.new("RGB", (8, 8)).save(validation / name)
    assert "the last step, 1000" in validation_section(tmp_path, kept_words(tmp_path / "lora", 1000))
    record = {"step": 600, "metric": "subject_in_context", "value": 0.41}
    atomic.write_bytes(validation / "best.safetensors", save({"w": torch.zeros(1)}, {"kept": json.dumps(record)}))
    section = validation_section(tmp_path, kept_words(tmp_path / "lora", 1000))
    assert "step 600 of 1000: the best subject in context (0.41)" in section
    assert "src='lora/validation/loss.png'" in section and "src='lora/validation/scores.png'" in section
