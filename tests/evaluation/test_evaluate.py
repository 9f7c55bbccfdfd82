import json
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image
from scoring_models import build_scoring_models, noise_image

from dreambooth.cli import main
from dreambooth.config import EvaluateConfig
from dreambooth.errors import UsageError
from dreambooth.evaluation import embeddings
from dreambooth.evaluation.evaluate import evaluate
from dreambooth.evaluation.lpips import LPIPS
from dreambooth.evaluation.metrics import remove_identifier


@pytest.fixture(scope="module")
def scorers(tmp_path_factory) -> dict:
    return build_scoring_models(tmp_path_factory.mktemp("scorers"))


def score(scorers, real, generated, out, **kw) -> dict:
    return evaluate(EvaluateConfig(real=str(real), generated=str(generated), output=str(out), **{**scorers, **kw}))


def images(folder, seeds, prompt=None):
    for i, seed in enumerate(seeds):
        noise_image(folder / f"image-{i:03d}.png", seed)
    if prompt is not None:
        (folder / "config.yaml").write_text(f"prompt: {prompt}\n")
    return folder


def test_an_image_scored_against_itself_gives_dino_and_clip_i_of_1(scorers, photos, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(photos / "00.jpg", one / "00.jpg")
    result = score(scorers, one, one, tmp_path / "scores.json", metrics=["dino", "clip-i"])
    assert result["means"]["dino"] == pytest.approx(1.0, abs=1e-6)
    assert result["means"]["clip_i"] == pytest.approx(1.0, abs=1e-6)
    saved = json.loads((tmp_path / "scores.json").read_text())
    assert saved["means"]["dino"] == result["means"]["dino"] and saved["images"][0]["file"] == "00.jpg"


def test_scores_are_symmetric_bounded_and_average_all_pairs(scorers, tmp_path):
    a, b = images(tmp_path / "a", [1, 2, 3]), images(tmp_path / "b", [4, 5])
    ab = score(scorers, a, b, tmp_path / "ab.json", metrics=["dino", "clip-i"])
    ba = score(scorers, b, a, tmp_path / "ba.json", metrics=["dino", "clip-i"])
    for key in ("dino", "clip_i"):
        assert ab["means"][key] == pytest.approx(ba["means"][key], abs=1e-9)
        assert ab["means"][key] < 0.999999  # different images: not trivially 1
        per_image = [row[key] for row in ab["images"]]
        assert len({round(v, 9) for v in per_image}) == len(per_image)  # each image scored on its own
        assert ab["means"][key] == pytest.approx(np.mean(per_image), abs=1e-12)  # every image paired with every real one


def test_remove_identifier_rule():
    assert remove_identifier("a sks dog on the beach", "sks") == "a dog on the beach"
    assert remove_identifier("a photo of SKS dog, sks", "sks") == "a photo of dog,"
    assert remove_identifier("a sksx dog with sks-dog", "sks") == "a sksx dog with sks-dog"
    assert remove_identifier("a sks dog", "") == "a sks dog"


@pytest.mark.slow
def test_clip_t_is_unchanged_by_the_identifier(scorers, tmp_path):
    real = images(tmp_path / "real", [1])
    with_sks = images(tmp_path / "sks", [7, 8], prompt="a sks dog on the beach")
    plain = images(tmp_path / "plain", [7, 8], prompt="a dog on the beach")
    other = images(tmp_path / "other", [7, 8])
    (tmp_path / "prompts.json").write_text(
        json.dumps({"image-000.png": "a XYZ dog on the beach", "image-001.png": "a xyz dog on the beach"})
    )
    kw = dict(metrics=["clip-t"])
    sks_result = score(scorers, real, with_sks, tmp_path / "1.json", identifier="sks", **kw)
    by_sks = sks_result["means"]["clip_t"]
    by_plain = score(scorers, real, plain, tmp_path / "2.json", **kw)["means"]["clip_t"]
    by_xyz = score(scorers, real, other, tmp_path / "3.json", identifier="xyz", prompts=str(tmp_path / "prompts.json"), **kw)[
        "means"
    ]["clip_t"]
    kept = score(scorers, real, with_sks, tmp_path / "4.json", **kw)["means"]["clip_t"]
    assert by_sks == pytest.approx(by_plain, abs=1e-9) and by_xyz == pytest.approx(by_plain, abs=1e-9)
    assert {row["scored_prompt"] for row in sks_result["images"]} == {"a dog on the beach"}
    assert abs(kept - by_plain) > 1e-6  # the identifier would change the score had it stayed


def test_div_is_0_for_identical_images_and_positive_otherwise(scorers, tmp_path):
    real = images(tmp_path / "real", [1])
    same = images(tmp_path / "same", [5, 5, 5], prompt="a sks dog")
    varied = images(tmp_path / "varied", [5, 6, 7], prompt="a sks dog")
    zero = score(scorers, real, same, tmp_path / "1.json", metrics=["div"])
    assert zero["means"]["div"] == pytest.approx(0.0, abs=1e-6)
    assert zero["prompts"][0]["pairs"] == 3
    assert score(scorers, real, varied, tmp_path / "2.json", metrics=["div"])["means"]["div"] > 1e-4


def test_lpips_is_symmetric_zero_on_itself_and_uses_the_documented_keys():
    torch.manual_seed(0)
    net = LPIPS().eval()
    x, y = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.allclose(net(x, y), net(y, x)) and torch.allclose(net(x, x), torch.zeros(2))
    keys = set(net.state_dict())
    assert keys == {f"features.{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")} | {
        f"lin{i}.model.1.weight" for i in range(5)
    }


def test_pres_compares_class_prompt_images_with_the_real_ones(scorers, tmp_path):
    real = images(tmp_path / "real", [1])
    gen = images(tmp_path / "gen", [2, 3], prompt="a sks dog")
    same_as_real = images(tmp_path / "class_same", [1])
    other = images(tmp_path / "class_other", [9, 10])
    assert score(scorers, real, gen, tmp_path / "1.json", metrics=["pres"], class_generated=str(same_as_real))["means"][
        "pres"
    ] == pytest.approx(1, abs=1e-6)
    pres = score(scorers, real, gen, tmp_path / "2.json", metrics=["pres"], class_generated=str(other))
    assert pres["means"]["pres"] < 0.999999 and pres["counts"]["class_generated"] == 2
    skipped = score(scorers, real, gen, tmp_path / "3.json", metrics=["pres"])
    assert skipped["means"]["pres"] is None and "--class-generated" in skipped["skipped"]["pres"]


def test_prompts_from_generate_folders_grid_skipped_and_identifier_from_the_lora(scorers, tmp_path):
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "config.yaml").write_text("instance_prompt: a photo of qwe dog\nclass_prompt: a photo of a dog\n")
    root = tmp_path / "out"
    for name, prompt, seeds in (("beach", "a qwe dog on the beach", [1, 2]), ("snow", "a qwe dog in the snow", [3, 4])):
        folder = images(root / name, seeds)
        noise_image(folder / "grid.png", 99)
        (folder / "config.yaml").write_text(f"prompt: {prompt}\nlora: {lora}\n")
    result = score(scorers, images(tmp_path / "real", [5]), root, tmp_path / "s.json", metrics=["clip-t"])
    assert result["identifier"] == "qwe" and result["counts"]["generated"] == 4
    assert [g["prompt"] for g in result["prompts"]] == ["a qwe dog on the beach", "a qwe dog in the snow"]
    assert {row["scored_prompt"] for row in result["images"]} == {"a dog on the beach", "a dog in the snow"}
    assert {row["file"] for row in result["images"]} == {
        "beach/image-000.png",
        "beach/image-001.png",
        "snow/image-000.png",
        "snow/image-001.png",
    }


def test_embeddings_are_cached_per_file_until_the_file_changes(scorers, tmp_path, monkeypatch):
    real, gen = images(tmp_path / "real", [1, 2]), images(tmp_path / "gen", [3])
    score(scorers, real, gen, tmp_path / "s.json", metrics=["dino"])
    assert (tmp_path / "embeddings-cache.safetensors").is_file()

    def must_not_run(self, pixels):
        raise AssertionError("embedded again")

    monkeypatch.setattr(embeddings.DinoEncoder, "embed", must_not_run)
    score(scorers, real, gen, tmp_path / "s.json", metrics=["dino"])  # a new process would read the cache file the same way
    time.sleep(0.01)
    noise_image(gen / "image-000.png", 4)  # new content, new mtime
    with pytest.raises(AssertionError, match="embedded again"):
        score(scorers, real, gen, tmp_path / "s.json", metrics=["dino"])


def test_dino_preprocessing_is_resize_256_bicubic_then_centre_crop_224():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8))  # 300 wide, 200 high
    expected = image.resize((384, 256), Image.BICUBIC).crop((80, 16, 304, 240))
    arr = (np.asarray(expected, dtype=np.float32) / 255 - embeddings.IMAGENET_MEAN) / embeddings.IMAGENET_STD
    got = embeddings.dino_pixels(image)
    assert got.shape == (3, 224, 224)
    assert torch.allclose(got, torch.from_numpy(arr).permute(2, 0, 1).float(), atol=1e-5)


def test_missing_models_offline_name_the_flag(scorers, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    real, gen = images(tmp_path / "real", [1]), images(tmp_path / "gen", [2])
    cases = [
        (
            dict(dino_model="facebook/dino-vits16-not-downloaded", metrics=["dino"]),
            "--dino-model facebook/dino-vits16-not-downloaded",
        ),
        (dict(clip_model="openai/clip-not-downloaded", metrics=["clip-i"]), "--clip-model openai/clip-not-downloaded"),
        (dict(lpips_net=str(tmp_path / "missing.safetensors"), metrics=["div"]), "--lpips-net"),
        (dict(dino_model=str(tmp_path / "no-such-folder"), metrics=["dino"]), "--dino-model"),
    ]
    for kw, flag in cases:
        with pytest.raises(UsageError) as err:
            score(scorers, real, gen, tmp_path / "s.json", **kw)
        assert flag in str(err.value) and "\n" not in str(err.value)
    pickled = tmp_path / "pickled-dino"
    shutil.copytree(scorers["dino_model"], pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(UsageError, match="--dino-model .*no .safetensors"):
        score(scorers, real, gen, tmp_path / "s.json", dino_model=str(pickled), metrics=["dino"])
    assert not (tmp_path / "s.json").exists()


def test_evaluate_command_prints_a_table_and_writes_json(scorers, tmp_path, capsys):
    real, gen = images(tmp_path / "real", [1, 2]), images(tmp_path / "gen", [3, 4], prompt="a sks dog")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in scorers.items()]
    code = main(
        [
            "evaluate",
            "--real",
            str(real),
            "--generated",
            str(gen),
            "--output",
            str(tmp_path / "s.json"),
            "--identifier",
            "sks",
            *flags,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "DINO" in out and "CLIP-T" in out and "a sks dog" in out and "mean" in out
    assert set(json.loads((tmp_path / "s.json").read_text())["means"]) == {"dino", "clip_i", "clip_t", "pres", "div"}
    assert main(["evaluate", "--generated", str(gen), "--output", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--real" in err and err.count("\n") == 0
    assert (
        main(
            [
                "evaluate",
                "--real",
                str(real),
                "--generated",
                str(gen),
                "--output",
                "x.json",
                "--prompts",
                str(tmp_path / "none.json"),
            ]
        )
        == 2
    )
    assert "--prompts" in capsys.readouterr().err
