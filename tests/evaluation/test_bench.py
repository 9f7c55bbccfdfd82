import csv
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from scoring_models import build_scoring_models, noise_image

import dreambooth.evaluation.bench as bench_mod
from dreambooth.cli import main
from dreambooth.config import BenchConfig
from dreambooth.errors import UsageError
from dreambooth.evaluation import dreambench

DATA = Path(__file__).parents[1] / "data"
LIVE = {"cat", "cat2", "dog", "dog2", "dog3", "dog5", "dog6", "dog7", "dog8"}


def test_prompt_lists_of_the_dreambench_file():
    bench = dreambench.parse((DATA / "prompts_and_classes.txt").read_text())
    assert len(bench.object_prompts) == 25 and len(bench.live_prompts) == 25
    assert len(bench.classes) == 30 and bench.classes["bear_plushie"] == "stuffed animal"
    assert {s for s in bench.classes if bench.is_live(s)} == LIVE
    live, thing = bench.prompts("dog2", "sks"), bench.prompts("bear_plushie", "sks")
    assert live[0] == "a sks dog in the jungle" and thing[0] == "a sks stuffed animal in the jungle"
    assert live[10] == "a sks dog wearing a red hat" and thing[10] == "a sks stuffed animal with a wheat field in the background"
    assert live[-1] == "a cube shaped sks dog" and thing[-1] == "a cube shaped sks stuffed animal"
    assert all("sks" in p and "{" not in p for p in live + thing)
    with pytest.raises(UsageError, match="Object Prompts"):
        dreambench.parse("Classes\nsubject_name,class\ndog,dog\n", "x.txt")


@pytest.fixture(scope="module")
def scorers(tmp_path_factory) -> dict:
    return build_scoring_models(tmp_path_factory.mktemp("scorers"))


@pytest.fixture
def dataset(tmp_path, photos) -> Path:
    """Two subjects in the DreamBench layout: the bundled dog (live) and a made-up teapot (object)."""
    root = tmp_path / "dreambench"
    root.mkdir()
    shutil.copy(DATA / "prompts_and_classes.txt", root)
    shutil.copytree(photos, root / "dog")
    for i in range(3):
        noise_image(root / "teapot" / f"{i:02d}.jpg", i)
    return root


def small(dataset: Path, out: Path, scorers: dict, **kw) -> BenchConfig:
    train_yaml = out.parent / "train.yaml"
    train_yaml.write_text("class_image_steps: 1\nrank: 2\n")
    base = dict(
        dataset=str(dataset),
        output_dir=str(out),
        subjects=["dog", "teapot"],
        num_prompts=2,
        images_per_prompt=2,
        model="tiny",
        max_steps=1,
        num_class_images=1,
        steps=1,
        train_config=str(train_yaml),
        **scorers,
    )
    return BenchConfig(**{**base, **kw})


@pytest.mark.slow
def test_two_subject_bench_end_to_end_then_resumed(dataset, scorers, tmp_path, monkeypatch):
    out = tmp_path / "bench"
    bench_mod.bench(small(dataset, out, scorers))

    summary = json.loads((out / "bench.json").read_text())
    assert [r["subject"] for r in summary["subjects"]] == ["dog", "teapot"]
    assert [r["kind"] for r in summary["subjects"]] == ["live", "object"]
    for r in summary["subjects"]:  # the summary row is the subject's own scores
        means = json.loads((out / r["subject"] / "scores.json").read_text())["means"]
        assert all(r[k] == means[k] and r[k] is not None for k in ("dino", "clip_i", "clip_t", "pres", "div"))
    assert summary["mean"]["dino"] == pytest.approx((summary["subjects"][0]["dino"] + summary["subjects"][1]["dino"]) / 2)
    rows = list(csv.DictReader((out / "bench.csv").open()))
    assert [r["row"] for r in rows[:3]] == ["dog", "teapot", "mean"] and len(rows) == 3 + 6
    assert rows[5]["row"] == "DreamBooth (Stable Diffusion)" and rows[5]["dino"] == "0.668" and rows[5]["clip_t"] == "0.305"
    assert (
        "| *DreamBooth (Imagen) with prior preservation* | | Ruiz et al. 2022 | – | – | – | 0.493 | 0.391 |"
        in (out / "bench.md").read_text()
    )
    page = (out / "bench.html").read_text()
    assert "dog/real.png" in page and "teapot/generated.png" in page and "0.774" in page
    assert Image.open(out / "dog" / "real.png").size == (5 * 128, 128)  # the five photos in a row
    assert Image.open(out / "dog" / "generated.png").size == (2 * 128, 128)  # one image per prompt

    scores = json.loads((out / "dog" / "scores.json").read_text())
    assert [g["prompt"] for g in scores["prompts"]] == ["a sks dog in the jungle", "a sks dog in the snow"]
    assert {row["scored_prompt"] for row in scores["images"]} == {"a dog in the jungle", "a dog in the snow"}
    assert scores["counts"] == {"real": 5, "generated": 4, "class_generated": 2, "with_prompt": 4}
    assert "prompt: a dog" in (out / "dog" / "class" / "config.yaml").read_text()
    trained = (out / "dog" / "lora" / "config.yaml").read_text()
    assert (
        "instance_prompt: a photo of sks dog" in trained and "class_prompt: a photo of a dog" in trained and "rank: 2" in trained
    )

    def must_not_run(*a, **k):
        raise AssertionError("redone")

    # Finished subjects are skipped whole; with their scores gone only scoring runs again.
    monkeypatch.setattr(bench_mod, "train_subject", must_not_run)
    monkeypatch.setattr(bench_mod, "run_subject", must_not_run)
    bench_mod.bench(small(dataset, out, scorers))
    assert json.loads((out / "bench.json").read_text())["subjects"] == summary["subjects"]
    monkeypatch.undo()
    monkeypatch.setattr("dreambooth.training.loop.train", must_not_run)
    monkeypatch.setattr("dreambooth.sampling.draw", must_not_run)
    (out / "teapot" / "scores.json").unlink()
    bench_mod.bench(small(dataset, out, scorers))
    assert json.loads((out / "teapot" / "scores.json").read_text())["means"] == pytest.approx(
        {k: v for k, v in summary["subjects"][1].items() if k in ("dino", "clip_i", "clip_t", "pres", "div")}
    )

    # Other training settings never silently reuse a LoRA trained with the old ones.
    with pytest.raises(UsageError, match="dog/lora was trained with other settings .*max_steps 1, not 3"):
        bench_mod.bench(small(dataset, out, scorers, max_steps=3))


def test_bench_bad_inputs_fail_before_any_model_loads(dataset, tmp_path, capsys):
    out = str(tmp_path / "out")

    def bad(argv, *names):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and all(n in err for n in names), err

    bad(["bench", "--output-dir", out], "DATASET_DIR")
    bad(["bench", str(tmp_path / "nowhere"), "--output-dir", out], "--dataset", "no such folder")
    bad(["bench", str(dataset), "--output-dir", out, "--subjects", "dog", "unicorn"], "--subjects unicorn")
    bad(["bench", str(dataset), "--output-dir", out, "--subjects", "cat"], "--subjects cat", "no folder")
    (tmp_path / "t.yaml").write_text("max_steps: 5\n")
    bad(["bench", str(dataset), "--output-dir", out, "--train-config", str(tmp_path / "t.yaml")], "--train-config", "max_steps")
    (tmp_path / "t.yaml").write_text("rank: big\n")
    bad(["bench", str(dataset), "--output-dir", out, "--train-config", str(tmp_path / "t.yaml")], "--train-config", "rank")
    bad(["bench", "--dataset", str(dataset), "--output-dir", out, "--images-per-prompt", "0"], "--images-per-prompt")
    assert not Path(out).exists()


def test_a_report_with_a_column_block_per_method(tmp_path):
    from dreambooth.evaluation import bench_report

    def row(subject, dino):
        return {"subject": subject, "class": "dog", "kind": "live", "dino": dino, "clip_i": 0.5, "clip_t": 0.25,
                "pres": None, "div": 0.125}  # fmt: skip

    by_method = {"dreambooth": [row("dog", 0.75), row("dog2", 0.25)], "textual-inversion": [row("dog", 0.5)]}
    table = bench_report.methods_markdown_table(by_method).splitlines()
    assert (
        table[0].startswith("| | class | kind | dreambooth DINO | dreambooth CLIP-I |") and "textual-inversion DIV |" in table[0]
    )
    assert table[2] == "| dog | dog | live | 0.750 | 0.500 | 0.250 | – | 0.125 | 0.500 | 0.500 | 0.250 | – | 0.125 |"
    assert table[3].startswith("| dog2 | dog | live | 0.250 |") and table[3].endswith("| – | – | – | – | – |")
    assert table[4].startswith("| **mean** |  | 2 subjects | 0.500 |")
    settings = {m: {"model": "tiny", "max_steps": 1, "with_prior_preservation": True, "images_per_prompt": 2,
                    "num_prompts": 2, "steps": 1, "guidance": 7.5, "seed": 0} for m in by_method}  # fmt: skip
    bench_report.write_methods(tmp_path, by_method, settings)
    summary = json.loads((tmp_path / "bench.json").read_text())
    assert summary["methods"]["textual-inversion"]["mean"]["dino"] == 0.5 and summary["settings"] == settings
    rows = list(csv.DictReader((tmp_path / "bench.csv").open()))
    assert rows[0]["dreambooth:dino"] == "0.7500" and rows[1]["textual-inversion:dino"] == ""
    assert "colspan='5'><a href='textual-inversion/bench.html'>" in (tmp_path / "bench.html").read_text()
    assert "| *Textual Inversion (Stable Diffusion)* | 0.569 |" in (tmp_path / "bench.md").read_text()


def test_bench_methods_are_checked_before_anything_runs(dataset, tmp_path, capsys):
    out = str(tmp_path / "out")
    for methods, words in ((["dreambooth", "lora"], "--method lora"), (["pivotal", "pivotal"], "name each method once")):
        assert main(["bench", str(dataset), "--output-dir", out, "--method", *methods]) == 2
        assert words in capsys.readouterr().err
    (tmp_path / "t.yaml").write_text("method: pivotal\n")
    assert main(["bench", str(dataset), "--output-dir", out, "--train-config", str(tmp_path / "t.yaml")]) == 2
    assert "'method' is set by the bench" in capsys.readouterr().err
    assert not Path(out).exists()


@pytest.mark.slow
def test_bench_of_two_methods_on_the_tiny_model(dataset, scorers, tmp_path):
    out = tmp_path / "bench"
    cfg = small(dataset, out, scorers, subjects=["dog"], num_prompts=1, method=["dreambooth", "textual-inversion"])
    bench_mod.bench(cfg)
    ti = out / "textual-inversion" / "dog"
    assert (out / "dreambooth" / "dog" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (ti / "lora" / "lora_emb.safetensors").is_file() and not (ti / "lora" / "pytorch_lora_weights.safetensors").exists()
    trained = (ti / "lora" / "config.yaml").read_text()
    assert "method: textual-inversion" in trained and "instance_prompt: a photo of TOK dog" in trained
    assert "rank: 2" not in trained  # the --train-config's LoRA settings are not textual inversion's
    scores = json.loads((ti / "scores.json").read_text())
    assert [g["prompt"] for g in scores["prompts"]] == ["a <s0><s1> dog in the jungle"]
    assert {row["scored_prompt"] for row in scores["images"]} == {"a dog in the jungle"}
    summary = json.loads((out / "bench.json").read_text())
    assert list(summary["methods"]) == ["dreambooth", "textual-inversion"]
    assert summary["methods"]["textual-inversion"]["subjects"][0]["dino"] == scores["means"]["dino"]
    assert "| dog | dog | live |" in (out / "bench.md").read_text()
    assert (out / "dreambooth" / "bench.md").is_file() and (out / "textual-inversion" / "bench.html").is_file()
