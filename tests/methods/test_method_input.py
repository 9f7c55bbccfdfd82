"""Bad input for --method textual-inversion / pivotal: one line, exit code 2, nothing written; and the flag names of
diffusers' advanced script."""

import pytest

from dreambooth.cli import build_parser, config_from_args, main
from dreambooth.config import Method, TrainConfig


def refused(capsys, out, *args) -> str:
    from conftest import SAMPLE

    code = main(["train", "--instance-dir", str(SAMPLE), "--output-dir", str(out), "--max-steps", "1", *args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("dreambooth: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert not out.exists()  # nothing written
    return lines[0]


def test_a_prompt_without_the_token_abstraction_is_refused(tmp_path, capsys):
    line = refused(capsys, tmp_path / "run", "--method", "pivotal", "--instance-prompt", "a photo of sks dog")
    assert "--instance-prompt 'a photo of sks dog': has no 'TOK'" in line and "--token-abstraction" in line


@pytest.mark.parametrize(
    "extra, flag",
    [(["--rank", "4"], "--rank"), (["--train-text-encoder"], "--train-text-encoder"), (["--dora"], "--dora"),
     (["--target-modules", "to_q"], "--target-modules"), (["--export", "kohya"], "--export kohya")],
)  # fmt: skip
def test_textual_inversion_with_lora_options_is_refused(tmp_path, capsys, extra, flag):
    line = refused(capsys, tmp_path / "run", "--method", "textual-inversion", "--instance-prompt", "a photo of TOK dog", *extra)
    assert line.startswith(f"dreambooth: error: {flag}") and "textual-inversion" in line


@pytest.mark.slow  # saves and loads a base folder: seconds
def test_a_new_token_the_base_already_has_is_refused(tmp_path, capsys):
    from dreambooth.families.sd import build_tiny

    pipe = build_tiny()
    pipe.tokenizer.add_tokens(["<s1>"])  # a textual inversion saved with the base
    pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer))
    pipe.save_pretrained(tmp_path / "base")
    line = refused(capsys, tmp_path / "run", "--model", str(tmp_path / "base"), "--method", "textual-inversion",
                   "--instance-prompt", "a photo of TOK dog")  # fmt: skip
    assert "already has the token '<s1>'" in line


@pytest.mark.parametrize(
    "extra, words",
    [(["--method", "pivotal", "--ti-fraction", "0"], "--ti-fraction 0.0: must be above 0"),
     (["--initializer-word", "dog"], "--initializer-word: new tokens are made by --method textual-inversion or pivotal"),
     (["--method", "pivotal", "--tokens-per-subject", "0"], "--tokens-per-subject 0: must be at least 1")],
)  # fmt: skip
def test_settings_of_the_methods_are_checked(tmp_path, capsys, extra, words):
    assert words in refused(capsys, tmp_path / "run", "--instance-prompt", "a photo of TOK dog", *extra)


def test_diffusers_advanced_script_flag_names_fill_the_same_fields():
    args = build_parser().parse_args(
        [
            "train",
            "--train_text_encoder_ti",
            "--token_abstraction",
            "ZQX",
            "--num_new_tokens_per_abstraction",
            "3",
            "--train_text_encoder_ti_frac",
            "0.25",
        ]  # fmt: skip
    )
    cfg = config_from_args(TrainConfig, args)
    assert (cfg.method, cfg.token_abstraction, cfg.tokens_per_subject, cfg.ti_fraction) == (Method.PIVOTAL, "ZQX", 3, 0.25)


def test_an_embedded_models_recommended_lora_settings_do_not_count_as_asked_for():
    """The world recommends rank 8 and a text-encoder LoRA; a textual inversion on it asked for neither."""
    from dreambooth.fields import settings
    from dreambooth.methods import plan_of

    cfg = settings(TrainConfig, model="world", method="textual-inversion", instance_prompt="a photo of TOK dog")
    assert not cfg.train_text_encoder and plan_of(cfg).lora is False
