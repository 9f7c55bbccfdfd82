import pytest

from dreambooth.cli import build_parser, config_from_args
from dreambooth.config import TrainConfig, check_train
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
    assert clean.rank == 16 and clean.text_encoder_lr == 1e-4 and clean.use_8bit_adam and clean.max_steps == 300


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
