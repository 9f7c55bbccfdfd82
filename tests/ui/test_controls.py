"""The Train tab's settings: every TrainConfig field is a control or named as left out, and the page's choices give
the config the same choices as `dreambooth train` flags give, field by field."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from dreambooth.config import TrainConfig
from dreambooth.ui import controls, train_tab

SAMPLE = sorted((Path(__file__).parents[2] / "src" / "dreambooth" / "assets" / "sample_subject" / "dog").glob("*.jpg"))


def test_every_train_setting_is_on_the_page_or_left_out_with_a_reason():
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    assert len(controls.SHOWN) == len(set(controls.SHOWN)), "a control listed twice"
    assert not set(controls.SHOWN) & set(controls.OMITTED)
    missing = [n for n in names if n not in controls.SHOWN and n not in controls.OMITTED]
    assert missing == [], f"TrainConfig fields neither on the page (controls.BASIC / ADVANCED) nor in controls.OMITTED: {missing}"
    assert set(controls.SHOWN) | set(controls.OMITTED) == set(names)  # no name that is not a field
    assert all(len(reason) > 20 for reason in controls.OMITTED.values())
    # the first screen stays short; the rest is under Advanced
    assert len(controls.BASIC) <= 12 and len(controls.SHOWN) - len(controls.BASIC) >= 50


def test_the_settings_page_of_the_docs_names_every_setting():
    text = (Path(__file__).parents[2] / "docs" / "ui-settings.md").read_text()
    missing = [n for n in (*controls.SHOWN, *controls.OMITTED) if f"`--{n.replace('_', '-')}`" not in text]
    assert missing == [], f"docs/ui-settings.md does not name {missing}"


class Recorder:
    """Stands in for the job queue: keeps what Start submits."""

    def __init__(self):
        self.cfgs: list[TrainConfig] = []

    def submit(self, name, cfg, notes=None):
        self.cfgs.append(cfg)


def flags(values: dict) -> list[str]:
    """The `dreambooth train` flags for the controls' values, as a user would type them."""
    out: list[str] = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        kind = controls.kind(name)
        if kind == "check":
            out.append(flag if value else "--no-" + name.replace("_", "-"))
        elif kind == "words":
            out += [flag, *str(value).split()] if str(value).split() else []
        else:
            out += [flag, str(value)]
    return out


def cli_config(argv: list[str]) -> TrainConfig:
    from dreambooth.cli import build_parser, config_from_args

    return config_from_args(TrainConfig, build_parser().parse_args(["train", *argv]))


# Each scenario sets controls to values other than the page's first ones; together they set every control (checked
# below), in combinations `dreambooth train` accepts.
SCENARIOS = {
    "lora": {
        "model": "tiny", "with_prior_preservation": True, "class_prompt": "a photo of a dog on grass",
        "num_class_images": 7, "max_steps": 12, "rank": 6, "learning_rate": 2e-4, "train_text_encoder": True,
        "text_encoder_lr": 3e-5, "resolution": 64, "export": "none",
        "lora_alpha": 3.0, "dora": True, "lora_dropout": 0.1, "target_modules": "to_q to_v",
        "text_encoder_target_modules": "q_proj v_proj",
        "optimizer": "adamw8bit", "lr_scheduler": "cosine", "lr_warmup_steps": 3, "batch_size": 2,
        "gradient_accumulation_steps": 2, "max_grad_norm": 0.5, "adam_beta1": 0.8, "adam_beta2": 0.99,
        "adam_weight_decay": 0.02, "adam_epsilon": 1e-7, "ema_decay": 0.99, "use_ema_weights": True,
        "masked_loss": True, "mask_background_weight": 0.2, "bucketing": True, "center_crop": False, "random_flip": True,
        "caption_dropout": 0.1,
        "class_prompts_file": "a photo of a dog\na photo of a dog on the beach", "class_caption_dropout": 0.3,
        "preserve_unconditional": True, "prior_loss_weight": 1.5, "class_image_steps": 9,
        "validation_prompts": "a photo of sks dog\na photo of sks dog in the snow", "validation_loss": True,
        "validation_steps": 5, "num_validation_images": 3, "validation_prompt": "a photo of sks dog at night",
        "dino_model": "dino-folder", "clip_model": "clip-folder",
        "snr_gamma": 5.0, "weighting_scheme": "logit_normal", "logit_mean": 0.5, "logit_std": 1.5, "mode_scale": 1.1,
        "training_guidance": 3.5, "max_sequence_length": 77,
        "base_quantization": "nf4", "mixed_precision": "bf16", "gradient_checkpointing": True, "compile": True,
        "vae": "some/vae",
        "num_samples": 2, "sample_steps": 7, "guidance_scale": 5.0, "sample_batch_size": 3, "seed": 11,
        "checkpoint_every": 4, "checkpoints_total_limit": 3,
    },
    "lokr, prodigy, keep-best": {
        "model": "world", "adapter": "lokr", "lokr_factor": 4, "optimizer": "prodigy", "learning_rate": 1.0,
        "text_encoder_lr": 1.0, "keep_best": "subject_in_context", "prior_mode": "base-prediction",
        "class_prompts_file": "", "preserve_unconditional": False, "with_prior_preservation": True,
        "validation_prompts": "a photo of sks dog on the beach",
    },
    "pivotal": {
        "model": "tiny-flux", "method": "pivotal", "token_abstraction": "TOKX", "tokens_per_subject": 3,
        "initializer_word": "dog", "ti_fraction": 0.25, "t5_tokens": True, "with_prior_preservation": False,
        "class_prompt": "a photo of a dog", "train_text_encoder": False,
    },
    "several subjects": {
        "model": "tiny", "with_prior_preservation": True,
        "subjects": "- {instance_dir: a, instance_prompt: a photo of sks dog, class_prompt: a photo of a dog}\n"
        "- {instance_dir: b, instance_prompt: a photo of zwx dog, class_prompt: a photo of a dog}",
    },
}  # fmt: skip


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_page_builds_the_config_the_same_flags_build(tmp_path, scenario):
    workspace = tmp_path / "ws"
    for folder in ("a", "b"):
        shutil.copytree(SAMPLE[0].parent, workspace / folder)
    changes = SCENARIOS[scenario]
    shown = {**train_tab.page_settings("tiny", "dog"), **changes}
    jobs = Recorder()
    values = [shown[name] for name in controls.SHOWN]
    message = train_tab.start(workspace, jobs, [str(p) for p in SAMPLE], "", "dog", "sks", *values)  # type: ignore[arg-type]
    assert "queued with" in message, message
    page = jobs.cfgs[0]

    # the same choices as flags; the text boxes as the files the page wrote, the folders the page chose
    given = {name: value for name, value in shown.items() if name not in controls.TEXT_FILES}
    texts = {name: shown[name].strip() for name in controls.TEXT_FILES if shown[name].strip()}
    files = {name: getattr(page, name) for name in texts}
    for name, text in texts.items():
        written = Path(files[name]).read_text(encoding="utf-8")
        assert written == text + "\n" or name == "subjects", name  # the subjects file names the copies of the photos
    if "subjects" in texts:  # each subject brings its own photos and prompts: the single subject's fields are not sent
        given.pop("class_prompt")
        entries = yaml.safe_load(Path(files["subjects"]).read_text())
        assert [len(list(Path(e["instance_dir"]).glob("photo-*"))) for e in entries] == [len(SAMPLE)] * 2
        assert all(Path(e["instance_dir"]).is_relative_to(workspace / "uploads") for e in entries)
        paths = {"output_dir": page.output_dir}
    else:
        identifier = changes.get("token_abstraction", "sks")  # textual inversion, pivotal: the new tokens' word
        paths = {
            "instance_dir": page.instance_dir,
            "output_dir": page.output_dir,
            "instance_prompt": f"a photo of {identifier} dog",
        }
    cli = cli_config(flags(given) + flags({**files, **paths}))
    differ = {f.name: (getattr(page, f.name), getattr(cli, f.name)) for f in dataclasses.fields(TrainConfig)
              if getattr(page, f.name) != getattr(cli, f.name)}  # fmt: skip
    assert differ == {}
    # and each control the scenario set reached the config as set
    for name, value in changes.items():
        if name not in controls.TEXT_FILES:
            assert getattr(page, name) == controls.as_values({name: value})[name], name


def test_the_scenarios_set_every_control():
    first = train_tab.page_settings("tiny", "dog")
    changed = {name for values in SCENARIOS.values() for name, value in values.items() if value != first[name]}
    assert set(controls.SHOWN) - changed == set(), "give these controls a value in a scenario"


def test_a_bad_value_on_the_page_is_one_line_naming_the_setting(tmp_path):
    shown = {**train_tab.page_settings("tiny", "dog"), "lora_dropout": 1.5}
    message = train_tab.start(tmp_path, Recorder(), [str(p) for p in SAMPLE], "", "dog", "sks",  # type: ignore[arg-type]
                              *[shown[n] for n in controls.SHOWN])  # fmt: skip
    assert message == "Error: --lora-dropout 1.5: must be below 1" and not (tmp_path / "uploads").exists()
    shown = {**train_tab.page_settings("tiny", "dog"), "max_steps": None}
    message = train_tab.start(tmp_path, Recorder(), [], "", "dog", "sks", *[shown[n] for n in controls.SHOWN])  # type: ignore[arg-type]
    assert message == "Error: Steps (--max-steps): '' is not a valid int; fix the value", message


def test_masks_travel_with_their_photos(tmp_path):
    """name.mask.png dropped with name.png is stored beside the photo's copy; a photo's alpha channel is kept."""
    from dreambooth.training.photos import load_folder
    from dreambooth.ui.uploads import store_photos

    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (16, 16), "red").save(src / "a.png")
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (0, 0, 8, 16))
    mask.save(src / "a.mask.png")
    rgba = Image.new("RGBA", (16, 16), (0, 0, 255, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 16, 4))
    rgba.save(src / "b.png")
    Image.new("L", (8, 8)).save(src / "c.mask.png")
    sources = [(p.name, p) for p in sorted(src.iterdir())]
    stored, problems = store_photos(sources, tmp_path / "dest")
    assert [p.name for p in stored] == ["photo-01.png", "photo-02.png"]
    assert problems == ["c.mask.png: no photo c.* beside it; skipped"]
    photos = load_folder(tmp_path / "dest", masks=True)
    assert np.array_equal(np.asarray(photos[0].mask), np.asarray(mask))
    assert np.asarray(photos[1].mask)[:4].min() == 255 and np.asarray(photos[1].mask)[4:].max() == 0
