import pytest

from dreambooth.cli import build_parser, config_from_args
from dreambooth.config import GenerateConfig, TrainConfig, check_train
from dreambooth.errors import UsageError
from dreambooth.fields import from_dict

CLEAN = [
    "train",
    "--model",
    "runwayml/stable-diffusion-v1-5",
    "--instance-dir",
    "photos",
    "--instance-prompt",
    "a photo of sks dog",
    "--output-dir",
    "out",
    "--resolution",
    "512",
    "--use-8bit-adam",
    "--mixed-precision",
    "fp16",
    "--batch-size",
    "1",
    "--gradient-accumulation-steps",
    "1",
    "--learning-rate",
    "5e-4",
    "--lr-scheduler",
    "constant",
    "--lr-warmup-steps",
    "0",
    "--max-steps",
    "300",
    "--train-text-encoder",
    "--rank",
    "16",
    "--text-encoder-lr",
    "1e-4",
    "--seed",
    "42",
    "--with-prior-preservation",
    "--class-dir",
    "class",
    "--class-prompt",
    "a photo of a dog",
    "--num-class-images",
    "100",
    "--prior-loss-weight",
    "1.0",
]
# The notebook command this tool replaces (cloneofsimo/lora's script), with diffusers' names where they differ.
NOTEBOOK = [
    "train",
    "--pretrained_model_name_or_path",
    "runwayml/stable-diffusion-v1-5",
    "--instance_data_dir",
    "photos",
    "--instance_prompt",
    "a photo of sks dog",
    "--output_dir",
    "out",
    "--resolution",
    "512",
    "--use_8bit_adam",
    "--mixed_precision",
    "fp16",
    "--train_batch_size",
    "1",
    "--gradient_accumulation_steps",
    "1",
    "--learning_rate",
    "5e-4",
    "--lr_scheduler",
    "constant",
    "--lr_warmup_steps",
    "0",
    "--max_train_steps",
    "300",
    "--train_text_encoder",
    "--lora_rank",
    "16",
    "--learning_rate_text",
    "1e-4",
    "--seed",
    "42",
    "--with_prior_preservation",
    "--class_data_dir",
    "class",
    "--class_prompt",
    "a photo of a dog",
    "--num_class_images",
    "100",
    "--prior_loss_weight",
    "1.0",
]


def parse(argv):
    return config_from_args(TrainConfig, build_parser().parse_args(argv))


def test_notebook_flags_parse_to_the_same_config_as_clean_flags():
    clean = parse(CLEAN)
    assert parse(NOTEBOOK) == clean
    assert clean != TrainConfig()  # every flag above changed something
    assert clean.rank == 16 and clean.text_encoder_lr == 1e-4 and clean.optimizer == "adamw8bit" and clean.max_steps == 300


def test_diffusers_rank_flag_is_an_alias_too():
    assert parse(["train", "--rank", "4"]).rank == parse(["train", "--lora_rank", "4"]).rank == 4


def test_yaml_fills_the_config_and_flags_override_it(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text(
        "instance_dir: photos\ninstance_prompt: a photo of sks dog\nmax_train_steps: 50\nrank: 8\ntrain_text_encoder: true\n"
    )
    cfg = parse(["train", "--config", str(run), "--rank", "4"])
    assert cfg.max_steps == 50 and cfg.train_text_encoder and cfg.instance_dir == "photos"
    assert cfg.rank == 4


def test_unknown_yaml_key_is_an_error_naming_it(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text("instance_dir: photos\nlearnig_rate: 1e-4\n")
    with pytest.raises(UsageError, match="learnig_rate.*did you mean 'learning_rate'"):
        parse(["train", "--config", str(run)])


def test_bad_yaml_value_names_the_key():
    with pytest.raises(UsageError, match="key 'max_steps'"):
        from_dict(TrainConfig, {"max_steps": "many"}, source="run.yaml")
    with pytest.raises(UsageError, match="key 'rank'"):
        from_dict(TrainConfig, {"rank": 2.5}, source="run.yaml")


def test_bad_flag_value_names_the_flag():
    with pytest.raises(UsageError, match="--max-steps"):
        parse(["train", "--max-steps", "ten"])
    with pytest.raises(UsageError, match="--mixed-precision"):
        parse(["train", "--mixed-precision", "fp8"])


@pytest.mark.parametrize(
    "change, flag",
    [
        ({"resolution": 100}, "--resolution"),
        ({"with_prior_preservation": True}, "--class-prompt"),
        ({"rank": 0}, "--rank"),
        ({"learning_rate": 5.0}, "--learning-rate"),
        ({"instance_dir": ""}, "--instance-dir"),
    ],
)
def test_value_checks(change, flag):
    cfg = TrainConfig(**{"instance_dir": "photos", "instance_prompt": "a photo of sks dog", "output_dir": "out", **change})
    with pytest.raises(UsageError, match=flag):
        check_train(cfg)


def test_malformed_or_missing_config_files(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("rank: 4\n  max_steps: [1,\n")
    with pytest.raises(UsageError, match="broken.yaml: line \\d+ is not valid YAML"):
        parse(["train", "--config", str(broken)])
    listed = tmp_path / "list.yaml"
    listed.write_text("- rank\n- 4\n")
    with pytest.raises(UsageError, match="mapping of keys to values"):
        parse(["train", "--config", str(listed)])
    with pytest.raises(UsageError, match="--config .*no such file"):
        parse(["train", "--config", str(tmp_path / "nope.yaml")])


def test_non_finite_numbers_are_refused():
    with pytest.raises(UsageError, match="--prior-loss-weight"):
        parse(["train", "--prior-loss-weight", "nan"])
    with pytest.raises(UsageError, match="key 'learning_rate'"):
        from_dict(TrainConfig, {"learning_rate": float("inf")}, source="run.yaml")


def parse_args(argv):
    args = build_parser().parse_args(argv)
    return config_from_args({"train": TrainConfig, "generate": GenerateConfig}[argv[0]], args)


def test_an_embedded_models_recommended_settings_are_its_defaults(tmp_path):
    from dreambooth.models import EMBEDDED

    world = parse_args(["train", "--model", "world", "--instance-dir", "p", "--instance-prompt", "a photo of sks dog"])
    for name, value in EMBEDDED["world"].train.items():
        assert getattr(world, name) == value, name
    assert (world.learning_rate, world.snr_gamma, world.train_text_encoder) == (1e-3, 5.0, True)
    # a flag or a YAML key still wins; a model without recommendations keeps the general defaults
    (tmp_path / "run.yaml").write_text("rank: 4\nmax_steps: 7\n")
    mine = parse_args(["train", "--model", "world", "--config", str(tmp_path / "run.yaml"), "--max-steps", "9"])
    assert (mine.rank, mine.max_steps, mine.learning_rate) == (4, 9, 1e-3)
    assert parse_args(["train", "--model", "tiny"]).learning_rate == TrainConfig().learning_rate == 5e-4
    (tmp_path / "run2.yaml").write_text("model: world\n")
    assert parse_args(["train", "--config", str(tmp_path / "run2.yaml")]).rank == 8  # the model named in the YAML counts


def test_generate_takes_the_recommended_settings_of_the_model_the_lora_was_trained_on(tmp_path):
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "config.yaml").write_text("model: world\n")
    cfg = parse_args(["generate", "--lora", str(lora), "--prompt", "a photo of sks dog"])
    assert (cfg.guidance, cfg.steps, cfg.text_encoder_scale) == (4.0, 25, 0.8)
    assert parse_args(["generate", "--lora", str(lora), "--prompt", "x", "--guidance", "6"]).guidance == 6.0
    assert parse_args(["generate", "--prompt", "x"]).guidance == GenerateConfig().guidance == 7.5


def test_modes_are_types_and_the_saved_yaml_holds_their_names():
    from dreambooth.config import Precision, PriorMode
    from dreambooth.fields import to_yaml

    cfg = TrainConfig(prior_mode="base-prediction", mixed_precision="bf16", with_prior_preservation=True)
    assert cfg.prior() is PriorMode.BASE_PREDICTION and cfg.mixed_precision is Precision.BF16
    assert TrainConfig(prior_mode="base-prediction").prior() is None  # without prior preservation no mode is in force
    text = to_yaml(cfg)
    assert "prior_mode: base-prediction" in text and "mixed_precision: bf16" in text
    with pytest.raises(UsageError, match="--prior-mode.*'classes' is not one of generated, base-prediction"):
        parse_args(["train", "--prior-mode", "classes"])


def test_the_readme_train_command_on_world_trains_what_the_demo_trains(tmp_path):
    import dataclasses

    from dreambooth.world import DEMO_STEPS
    from dreambooth.world.demo import demo_train_config

    photos, out = tmp_path / "demo-run" / "subject", tmp_path / "runs" / "world-dog"
    readme = parse_args(
        ["train", "--model", "world", "--instance-dir", str(photos), "--instance-prompt", "a photo of sks dog",
         "--with-prior-preservation", "--class-prompt", "a photo of a dog", "--output-dir", str(out)]
    )  # fmt: skip
    # the same run but for the model card's samples, which the demo leaves out
    assert dataclasses.replace(readme, num_samples=0) == demo_train_config("dog", photos, out, DEMO_STEPS)


def test_use_8bit_adam_is_the_optimizer_adamw8bit_on_the_command_line_and_in_yaml(tmp_path):
    assert parse(["train", "--use-8bit-adam"]).optimizer == parse(["train", "--optimizer", "adamw8bit"]).optimizer == "adamw8bit"
    assert parse(["train"]).optimizer == "adamw"
    assert from_dict(TrainConfig, {"use_8bit_adam": True}).optimizer == "adamw8bit"
    assert from_dict(TrainConfig, {"use_8bit_adam": False, "optimizer": "prodigy"}).optimizer == "prodigy"  # off sets nothing
    with pytest.raises(UsageError, match="key 'use_8bit_adam'"):
        from_dict(TrainConfig, {"use_8bit_adam": "maybe"})
    with pytest.raises(UsageError, match="--optimizer: 'sgd' is not one of adamw, adamw8bit, prodigy"):
        parse(["train", "--optimizer", "sgd"])


def test_prodigy_learning_rates_are_1_unless_given_and_must_agree():
    base = ["train", "--instance-dir", "p", "--instance-prompt", "a photo of sks dog", "--output-dir", "o"]
    cfg = parse([*base, "--optimizer", "prodigy", "--model", "world"])  # over the world's AdamW learning rates too
    assert (cfg.learning_rate, cfg.text_encoder_lr) == (1.0, 1.0)
    check_train(cfg)
    assert parse([*base, "--optimizer", "prodigy", "--learning-rate", "0.5"]).learning_rate == 0.5
    assert parse([*base]).learning_rate == 5e-4  # AdamW's defaults stay
    with pytest.raises(UsageError, match="--text-encoder-lr 0.5: with --optimizer prodigy it must equal --learning-rate 1.0"):
        check_train(parse([*base, "--optimizer", "prodigy", "--train-text-encoder", "--text-encoder-lr", "0.5"]))
    with pytest.raises(UsageError, match="--learning-rate 1.0: must be between 0 and 1"):
        check_train(parse([*base, "--learning-rate", "1.0"]))  # AdamW


def test_ema_weights_need_a_decay_below_1():
    base = ["train", "--instance-dir", "p", "--instance-prompt", "a photo of sks dog", "--output-dir", "o"]
    with pytest.raises(UsageError, match="--use-ema-weights needs --ema-decay"):
        check_train(parse([*base, "--use-ema-weights"]))
    with pytest.raises(UsageError, match="--ema-decay 1.0: must be between 0 and 1"):
        check_train(parse([*base, "--ema-decay", "1"]))
    check_train(parse([*base, "--ema-decay", "0.999", "--use-ema-weights"]))


def test_preserve_unconditional_needs_class_caption_dropout_on_class_images():
    base = ["train", "--instance-dir", "p", "--instance-prompt", "a photo of sks dog", "--output-dir", "o"]
    prior = [*base, "--with-prior-preservation", "--class-prompt", "a photo of a dog", "--preserve-unconditional"]
    with pytest.raises(UsageError, match="--preserve-unconditional: acts on the class examples --class-caption-dropout"):
        check_train(parse(prior))
    with pytest.raises(UsageError, match="--preserve-unconditional"):
        check_train(parse([*prior, "--class-caption-dropout", "0.2", "--prior-mode", "base-prediction"]))
    check_train(parse([*prior, "--class-caption-dropout", "0.2"]))
