import subprocess
import sys

import pytest
from PIL import Image

from dreambooth.cli import main


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def bad(argv, capsys, *must_name):
    code, _, err = run(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert code == 2, err
    assert len(lines) == 1, err
    for name in must_name:
        assert name in lines[0], lines[0]
    return lines[0]


def train_args(photos, out, *extra):
    return ["train", "--instance-dir", str(photos), "--instance-prompt", "a photo of sks dog", "--output-dir", str(out), *extra]


def test_missing_and_empty_folders(tmp_path, capsys):
    bad(train_args(tmp_path / "missing", tmp_path / "out"), capsys, "--instance-dir", "no such folder")
    (tmp_path / "empty").mkdir()
    bad(train_args(tmp_path / "empty", tmp_path / "out"), capsys, "--instance-dir", "no usable image")
    assert not (tmp_path / "out").exists()  # nothing half written


def test_folder_with_no_usable_image(tmp_path, capsys):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"\x00" * 100)
    (folder / "b.png").write_text("hello")
    code, _, err = run(train_args(folder, tmp_path / "out"), capsys)
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert code == 2 and "no usable image" in err.splitlines()[-1]
    assert len(warnings) == 2 and "a.jpg: not a readable image" in warnings[0] and "b.png: not a readable image" in warnings[1]
    assert not (tmp_path / "out").exists()


def test_contradictions_and_bad_values(photos, tmp_path, capsys):
    out = tmp_path / "out"
    bad(train_args(photos, out, "--with-prior-preservation"), capsys, "--class-prompt")
    bad(train_args(photos, out, "--resolution", "100"), capsys, "--resolution", "multiple of 8")
    bad(train_args(photos, out, "--resolution", "big"), capsys, "--resolution")
    bad(train_args(photos, out, "--learning-rate", "-1"), capsys, "--learning-rate")
    bad(train_args(photos, out, "--bogus-flag", "1"), capsys, "--bogus-flag")
    out.write_text("a file")
    bad(train_args(photos, out), capsys, "--output-dir", "is a file")


def test_generate_bad_inputs(tmp_path, capsys):
    bad(["generate", "--output-dir", str(tmp_path / "g")], capsys, "--prompt")
    bad(["generate", "--prompt", "a dog", "--lora", str(tmp_path), "--output-dir", str(tmp_path / "g")], capsys, "--lora")
    assert not (tmp_path / "g").exists()


def test_identifier_and_generate_bad_numbers(capsys):
    bad(["identifier", "--count", "0"], capsys, "--count")
    bad(["identifier", "--model", "./no/such/model"], capsys, "--model")
    bad(["generate", "--prompt", "x", "--output-dir", "g", "--steps", "-3"], capsys, "--steps")
    bad(["generate", "--prompt", "x", "--output-dir", "g", "--unet-scale", "-1"], capsys, "--unet-scale")


def test_identifier_command(capsys):
    code, out, _ = run(["identifier", "--prompt", "a photo of sks dog", "--count", "5"], capsys)
    assert code == 0
    assert "sks(48136)" in out and "dog(1929)" in out
    assert len([line for line in out.splitlines() if line.startswith("  ") and line.split()[-1].isdigit()]) == 5


def test_entry_point_exits_2_with_one_line_and_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dreambooth.cli", *train_args(tmp_path / "nope", tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "--instance-dir" in proc.stderr


def test_train_then_generate_from_the_command_line(photos, tmp_path, capsys):
    lora, images = tmp_path / "lora", tmp_path / "images"
    code, out, err = run(
        train_args(
            photos,
            lora,
            "--with_prior_preservation",
            "--class_prompt",
            "a photo of a dog",
            "--num-class-images",
            "2",
            "--class-image-steps",
            "3",
            "--max_train_steps",
            "3",
            "--train_text_encoder",
            "--rank",
            "4",
            "--num-samples",
            "0",
        ),
        capsys,
    )
    assert code == 0, err
    assert "training" in err  # progress bar
    code, out, err = run(
        [
            "generate",
            "--lora",
            str(lora),
            "--prompt",
            "a photo of sks dog on the grass",
            "--num-images",
            "3",
            "--steps",
            "3",
            "--text-encoder-scale",
            "0.5",
            "--output-dir",
            str(images),
        ],
        capsys,
    )
    assert code == 0, err
    assert sorted(p.name for p in images.iterdir()) == [
        "config.yaml",
        "grid.png",
        "image-000.png",
        "image-001.png",
        "image-002.png",
    ]
    assert Image.open(images / "grid.png").size == (3 * 64, 64)
    assert "text_encoder_scale: 0.5" in (images / "config.yaml").read_text()


@pytest.mark.slow  # seconds of a whole run: the full suite keeps it, the fast lane does not
def test_python_api_as_documented_runs_twice_in_one_process(photos, tmp_path):
    from dreambooth import GenerateConfig, TrainConfig
    from dreambooth.generation import generate
    from dreambooth.training.loop import train

    for i in range(2):
        lora = train(
            TrainConfig(
                instance_dir=str(photos),
                instance_prompt="a photo of sks dog",
                output_dir=str(tmp_path / f"r{i}"),
                rank=2,
                max_steps=1,
                num_samples=0,
            )
        )
        assert (
            len(
                generate(
                    GenerateConfig(
                        lora=str(lora), prompt="a photo of sks dog", num_images=1, steps=2, output_dir=str(tmp_path / f"g{i}")
                    )
                )
            )
            == 1
        )


def test_evaluate_export_and_bench_bad_inputs(photos, tmp_path, capsys):
    out = tmp_path / "scores.json"
    bad(["evaluate", "--real", str(tmp_path / "nope"), "--generated", str(photos), "--output", str(out)], capsys, "--real")
    (tmp_path / "empty").mkdir()
    bad(["evaluate", "--real", str(photos), "--generated", str(tmp_path / "empty"), "--output", str(out)], capsys, "--generated")
    bad(
        ["evaluate", "--real", str(photos), "--generated", str(photos), "--output", str(out), "--metrics", "fid"],
        capsys,
        "--metrics",
    )
    bad(["evaluate", "--real", str(photos)], capsys, "--generated")
    assert not out.exists()
    bad(["export", "--lora", str(tmp_path / "nope")], capsys, "--lora")
    bad(["export", "--lora", str(photos), "--format", "onnx"], capsys, "--format")
    bad(["bench", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "b")], capsys, "--dataset")


def test_world_commands_bad_inputs(tmp_path, capsys):
    bad(["demo", "--max-steps", "0"], capsys, "--max-steps")
    bad(["demo", "--subject", "horse"], capsys, "--subject")
    bad(["demo", "--class-images", "0"], capsys, "--class-images")
    bad(["demo", "--mask-background-weight", "2"], capsys, "--mask-background-weight")
    bad(["demo", "--prior-loss-weight", "-1"], capsys, "--prior-loss-weight")
    bad(["pretrain-world", "--output-dir", str(tmp_path / "w"), "--diffusion-steps", "0"], capsys, "--diffusion-steps")
    bad(["pretrain-world", "--output-dir", str(tmp_path / "w"), "--learning-rate", "-1"], capsys, "--learning-rate")
    assert not (tmp_path / "w").exists()


def test_a_bad_mask_is_one_line_naming_it_and_nothing_is_written(photos, tmp_path, capsys):
    out = tmp_path / "out"
    (photos / "01.mask.png").write_bytes(b"\x89PNG broken")
    line = bad(train_args(photos, out, "--masked-loss"), capsys, str(photos / "01.mask.png"), "not a readable image")
    assert "Traceback" not in line and not out.exists()
    bad(train_args(photos, out, "--masked-loss", "--mask-background-weight", "2"), capsys, "--mask-background-weight")


def test_a_bad_class_prompts_file_is_one_line_naming_it(photos, tmp_path, capsys):
    out, prior = tmp_path / "out", ["--with-prior-preservation", "--class-prompt", "a photo of a dog"]
    missing = str(tmp_path / "contexts.txt")
    bad(train_args(photos, out, *prior, "--class-prompts-file", missing), capsys, f"--class-prompts-file {missing}")
    (tmp_path / "contexts.txt").write_text("a photo of a dog on the beach\n")
    both = [*prior, "--class-prompts-file", missing, "--prior-mode", "base-prediction"]
    bad(train_args(photos, out, *both), capsys, "--class-prompts-file", "--prior-mode generated")
    assert not out.exists()


def test_demo_flags_reach_the_demo(monkeypatch, capsys):
    import dreambooth.world.demo as demo
    import dreambooth.world.several as several
    from dreambooth.world import DEMO_STEPS

    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda *a, **kw: seen.update(args=a, kw=kw))
    monkeypatch.setattr(several, "run_several", lambda *a, **kw: seen.update(several=a))
    assert run(["demo", "--no-preserve-unconditional", "--prior-loss-weight", "1", "--subject", "cat"], capsys)[0] == 0
    assert seen["args"] == ("demo-run", DEMO_STEPS, "cat", 32)
    assert seen["kw"]["preserve_unconditional"] is False and seen["kw"]["prior_loss_weight"] == 1.0
    assert seen["kw"]["class_caption_dropout"] == 0.2 and seen["kw"]["masked_loss"] is True
    assert run(["demo", "--subjects", "dog", "cat", "--max-steps", "7"], capsys)[0] == 0
    assert seen["several"] == ("demo-run", ["dog", "cat"], 7, 32, 0)


PROBE = (
    "import sys\n"
    "from dreambooth.cli import main\n"
    "rc = main()\n"  # the process's own command line, as the `dreambooth` program runs
    "print('probe: bitsandbytes imported' if sys.modules.get('bitsandbytes') is not None else 'probe: no bitsandbytes')\n"
    "sys.exit(rc)\n"
)


def run_in_a_new_process(*argv: str) -> tuple[list[str], list[str]]:
    """stdout lines and stderr pieces (progress bars redraw with carriage returns) of one command line."""
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    pieces = [p.strip() for line in done.stderr.splitlines() for p in line.split("\r") if p.strip()]
    return done.stdout.splitlines(), pieces


@pytest.mark.slow
def test_train_and_generate_print_only_their_own_lines_and_leave_bitsandbytes_alone(tmp_path):
    """A first run used to open with bitsandbytes' "Failed to load CPU gemm_4bit_forward ..." and transformers'
    notices: now every line is the tool's, and bitsandbytes is imported only by a run that asks for it."""
    from conftest import SAMPLE

    train = ["train", "--instance-dir", str(SAMPLE), "--instance-prompt", "a photo of sks dog", "--max-steps", "2",
             "--num-samples", "1"]  # fmt: skip
    out, err = run_in_a_new_process(*train, "--output-dir", str(tmp_path / "run"))
    assert [line.split(" ")[0] for line in out] == ["tiny:", "kohya", "trained", "probe:"], out
    assert out[-1] == "probe: no bitsandbytes"
    assert all(piece.startswith(("training:", "samples:")) for piece in err), err

    out, err = run_in_a_new_process("generate", "--lora", str(tmp_path / "run"), "--prompt", "a photo of sks dog",
                                    "--num-images", "1", "--steps", "2", "--output-dir", str(tmp_path / "images"))  # fmt: skip
    assert out == ["1 images -> " + str(tmp_path / "images"), "probe: no bitsandbytes"], out
    assert all(piece.startswith("generating:") for piece in err), err


@pytest.mark.parametrize(
    "command, settings, needed",
    [
        ("train", {}, False),
        ("train", {"optimizer": "adamw8bit"}, True),
        ("train", {"base_quantization": "nf4"}, True),
        ("train", {"base_quantization": "int8"}, True),
        ("generate", {}, False),
        ("bench", {}, True),  # bench trains with whatever its settings name
    ],
)
def test_bitsandbytes_is_left_importable_exactly_for_the_runs_that_use_it(command, settings, needed):
    from dreambooth.config import BenchConfig, GenerateConfig, TrainConfig
    from dreambooth.optional_imports import needs_bitsandbytes

    cls = {"train": TrainConfig, "generate": GenerateConfig, "bench": BenchConfig}[command]
    assert needs_bitsandbytes(command, cls(**settings)) is needed


def test_a_command_run_inside_a_longer_process_hides_nothing(photos, tmp_path):
    """main([...]) (tests, scripts, the page run several commands in one process): a later one may need bitsandbytes."""
    argv = ["train", "--instance-dir", str(photos), "--instance-prompt", "a photo of sks dog", "--max-steps", "1",
            "--num-samples", "0", "--export", "none", "--output-dir", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 0
    assert "bitsandbytes" not in sys.modules or sys.modules["bitsandbytes"] is not None
