"""OUTPUT_DIR/progress.jsonl: what a run's loss did, readable from outside the process that trains it."""

from __future__ import annotations

import json

import pytest

from dreambooth.training import progress


def test_a_resumed_run_keeps_the_curve_its_lora_followed(tmp_path):
    for step, loss in [(10, 0.5), (20, 0.4), (30, 0.35)]:
        progress.append(tmp_path, step, 50, loss, step * 0.1)
    # stopped at 30, checkpoint at 20: the resumed run reads step 30 again, then goes on
    for step, loss in [(30, 0.33), (40, 0.3)]:
        progress.append(tmp_path, step, 50, loss, step * 0.1)
    with open(tmp_path / progress.PROGRESS_NAME, "a") as f:
        f.write('{"step": 50, "los')  # cut off by a crash
    lines = progress.read(tmp_path)
    assert [(e["step"], e["loss"]) for e in lines] == [(10, 0.5), (20, 0.4), (30, 0.33), (40, 0.3)]
    assert progress.read(tmp_path / "none") == []
    progress.append(tmp_path / "none", 10, 50, 0.5, 1.0)  # an unwritable log does not stop the run it watches


@pytest.mark.slow
def test_training_writes_the_losses_it_reads(photos, tmp_path):
    from dreambooth.config import TrainConfig
    from dreambooth.training.loop import train

    events = []
    cfg = TrainConfig(model="tiny", instance_dir=str(photos), instance_prompt="a photo of sks dog",
                      output_dir=str(tmp_path / "run"), max_steps=12, num_samples=0, export="none")  # fmt: skip
    train(cfg, events.append)
    lines = [json.loads(x) for x in (tmp_path / "run" / progress.PROGRESS_NAME).read_text().splitlines()]
    read = {e["step"]: e["loss"] for e in events if e["kind"] == "step" and e["loss"] is not None}
    assert [e["step"] for e in lines] == [10, 12] and all(e["max_steps"] == 12 for e in lines)
    assert [e["loss"] for e in lines] == [round(read[10], 6), round(read[12], 6)]
