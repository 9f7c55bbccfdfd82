"""The Gallery's cards and the Evaluate tab's refusals for world runs, without a browser or a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from dreambooth.config import TrainConfig
from dreambooth.fields import to_dict
from dreambooth.ui import evaluate_tab, gallery_tab
from dreambooth.ui.jobs import Jobs


def fake_run(workspace: Path, name: str, prompt: str = "a photo of sks dog", model: str = "world") -> Path:
    photos = workspace / "uploads" / name
    photos.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (32, 32), "purple").save(photos / f"photo-0{i + 1}.png")
    Image.new("L", (32, 32)).save(photos / "photo-01.mask.png")
    run = workspace / "runs" / name
    (run / "validation").mkdir(parents=True)
    for f in ("pytorch_lora_weights.safetensors", "lora_kohya.safetensors"):
        (run / f).write_bytes(b"x")
    Image.new("RGB", (64, 32)).save(run / "validation" / "step-000020.png")
    (run / "config.yaml").write_text(
        yaml.safe_dump({"model": model, "instance_prompt": prompt, "instance_dir": str(photos), "max_steps": 40})
    )
    return run


def test_a_card_per_run_with_photos_samples_scores_and_downloads(tmp_path):
    run = fake_run(tmp_path, "dog-1")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    cli = fake_run(tmp_path, "cli")
    (cli / "config.yaml").write_text(yaml.safe_dump({"model": "tiny", "instance_dir": str(outside)}))
    Image.new("RGB", (32, 32)).save(outside / "private.png")
    (tmp_path / "scores" / "runs-dog-1" / "world").mkdir(parents=True)
    scores = {"before": {"subject_fidelity": 0.0, "subject_in_context": 0.0, "class_drift": 0.0},
              "after": {"subject_fidelity": 0.75, "subject_in_context": 0.5, "class_drift": 0.25}}  # fmt: skip
    (tmp_path / "scores" / "runs-dog-1" / "world" / "scores.json").write_text(json.dumps(scores))

    html = gallery_tab.cards_html(tmp_path, Jobs(lambda *a: None))
    card = html.split("data-run='runs/dog-1'")[1].split("data-run=")[0]
    assert card.count("class='photo'") == 3 and "mask" not in card  # the masks beside the photos are not photos
    assert "validation/step-000020.png" in card
    assert "subject fidelity 0.00 → <b>0.75</b>" in card and "class drift 0.00 → <b>0.25</b>" in card
    assert f"download='lora_kohya.safetensors' href='/gradio_api/file={run / 'lora_kohya.safetensors'}'" in card
    cli_card = html.split("data-run='runs/cli'")[1]
    assert "private.png" not in cli_card and "not scored yet" in cli_card  # photos outside the workspace are not linked


def test_a_stopped_run_without_a_lora_gets_a_card_that_says_so(tmp_path):
    cfg = to_dict(TrainConfig(output_dir=str(tmp_path / "runs" / "dog-2"), max_steps=200))
    saved = {"id": 1, "name": "dog-2", "notes": [], "state": "stopped", "step": 20, "max_steps": 200, "loss": 0.2,
             "message": "stopped at step 20 with a checkpoint saved; Resume continues it", "output": "", "cfg": cfg}  # fmt: skip
    (tmp_path / "jobs.json").write_text(json.dumps({"jobs": [saved]}))
    jobs = Jobs(lambda *a: None, state_file=tmp_path / "jobs.json")
    html = gallery_tab.cards_html(tmp_path, jobs)
    assert "class='card unfinished' data-run='dog-2'" in html and "stopped at step 20/200" in html


@pytest.mark.parametrize(
    "prompt, samples, words",
    [
        ("a photo of sks car", 4, "the world's reader knows dog, cat, teapot, vase, backpack"),
        ("a photo of sks dog", 0, "samples per prompt 0: pass 1 to 32"),
    ],
)
def test_world_scores_refuse_in_one_line_and_write_nothing(tmp_path, prompt, samples, words):
    fake_run(tmp_path, "r", prompt)
    message, _ = evaluate_tab.score_world(tmp_path, "runs/r", samples)
    assert message.startswith("Error: ") and words in message and "\n" not in message
    assert not (tmp_path / "scores").exists()
    assert evaluate_tab.score_world(tmp_path, "../elsewhere", 4)[0] == "Error: Choose a finished run first"


def test_evaluate_shows_a_world_runs_table_and_other_runs_the_papers(tmp_path):
    fake_run(tmp_path, "w")
    fake_run(tmp_path, "t", model="tiny")
    assert evaluate_tab.is_world_run(tmp_path, "runs/w") and not evaluate_tab.is_world_run(tmp_path, "runs/t")
    assert "Not scored yet" in evaluate_tab.show(tmp_path, "runs/w")
    assert "DreamBooth (Stable Diffusion)" in evaluate_tab.show(tmp_path, "runs/t")


def test_the_gallery_shows_each_fleet_of_the_workspace_as_a_table(tmp_path):
    from dreambooth.fleet import report

    rows = [report.new_row("dog", "done"), report.new_row("<cat>", "failed", "--instance-dir x: no usable image")]
    report.write(tmp_path / "fleets" / "pets", rows, "pets.yaml")
    page = gallery_tab.cards_html(tmp_path, Jobs())
    assert "Fleet fleets/pets" in page and "1 done" in page and "1 failed" in page
    assert "&lt;cat&gt;" in page and "--instance-dir x: no usable image" in page
    (tmp_path / "no-fleet").mkdir()
    assert "Fleet" not in gallery_tab.cards_html(tmp_path / "no-fleet", Jobs())


def test_the_base_models_world_scores_are_drawn_once_per_copy_of_the_worlds_weights(tmp_path, monkeypatch):
    """Kept in the workspace for later scorings of the same class, identifier and samples; drawn afresh once the
    world's weights are another copy (a new version of the package), and the estimate says which."""
    from dreambooth import models
    from dreambooth.world import scores

    drawn = []

    def sample_and_score(pipe, reader, cls, n, identifier="sks"):
        drawn.append((cls, identifier, n))
        return {"subject_fidelity": 0.0}, {name: [Image.new("RGB", (4, 4))] * n for name in scores.prompts(cls, identifier)}

    monkeypatch.setattr(scores, "sample_and_score", sample_and_score)
    fake_run(tmp_path, "w")
    first = evaluate_tab.base_scores(tmp_path, None, None, "dog", "sks", 2)
    assert evaluate_tab.base_scores(tmp_path, None, None, "dog", "sks", 2)[0] == first[0] and len(drawn) == 1
    assert "the base model's are kept from before" in evaluate_tab.estimate(tmp_path, "runs/w", 2)
    evaluate_tab.base_scores(tmp_path, None, None, "dog", "sks", 4)
    assert len(drawn) == 2
    monkeypatch.setattr(models, "identity", lambda model: "weights of another version@1")
    assert "with the base model and with the run" in evaluate_tab.estimate(tmp_path, "runs/w", 2)
    evaluate_tab.base_scores(tmp_path, None, None, "dog", "sks", 2)
    assert drawn == [("dog", "sks", 2), ("dog", "sks", 4), ("dog", "sks", 2)]
