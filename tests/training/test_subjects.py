"""--subjects: several subjects in one LoRA; batches take turns between them, each with its own class prior."""

import shutil

import pytest
import torch

from dreambooth.cli import main
from dreambooth.config import TrainConfig
from dreambooth.errors import UsageError
from dreambooth.training.batches import Examples
from dreambooth.training.loop import release
from dreambooth.training.setup import class_folders, set_up


def two_subjects(photos, tmp_path, prior=True, **second):
    """The sample photos split into two subjects' folders, and a subjects file naming them (relative paths)."""
    for n, names in enumerate((["00.jpg", "01.jpg", "02.jpg"], ["03.jpg", "04.jpg"])):
        folder = tmp_path / f"subject{n}"
        folder.mkdir()
        for name in names:
            shutil.copy(photos / name, folder / name)
    entry = {"instance_dir": "subject1", "instance_prompt": "a photo of xon cat", "class_prompt": "a photo of a cat",
             "num_class_images": 3, **second}  # fmt: skip
    lines = ["- instance_dir: subject0", "  instance_prompt: a photo of sks dog", "  class_prompt: a photo of a dog",
             "  num_class_images: 2"]  # fmt: skip
    lines += [f"- {k}: {v}" if i == 0 else f"  {k}: {v}" for i, (k, v) in enumerate(entry.items()) if v is not None]
    path = tmp_path / "subjects.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_stream_takes_turns_between_subjects_each_with_its_own_class_images():
    cfg = TrainConfig(seed=3, batch_size=2, with_prior_preservation=True)
    groups = [([0, 1, 2], [0, 1]), ([3, 4], [2, 3, 4])]
    examples = Examples(cfg, None, None, [], [], torch.device("cpu"), torch.float32, [None] * 5, [None] * 5, groups=groups)
    picks = [examples.subject_picks(first, 2, True) for first in range(0, 24, 2)]
    for batch in picks:
        (_, a, _), (_, b, _), (_, ca, _), (_, cb, _) = batch
        assert a in groups[0][0] and b in groups[1][0]  # one example of each subject in every batch of two
        assert ca in groups[0][1] and cb in groups[1][1]  # and each brings a class image of its own class prompt
    # each subject runs through shuffled epochs of its own photos: every photo once per epoch
    first_subject = [batch[0][1] for batch in picks]
    assert all(sorted(first_subject[i : i + 3]) == [0, 1, 2] for i in range(0, 12, 3))
    second = [batch[1][1] for batch in picks]
    assert all(sorted(second[i : i + 2]) == [3, 4] for i in range(0, 12, 2))


@pytest.mark.slow
def test_two_subjects_train_into_one_lora_with_a_prior_per_class(photos, tmp_path):
    subjects = two_subjects(photos, tmp_path)
    cfg = TrainConfig(model="tiny", subjects=str(subjects), output_dir=str(tmp_path / "run"), with_prior_preservation=True,
                      max_steps=2, batch_size=2, num_samples=1, sample_steps=2)  # fmt: skip
    run = set_up(cfg)
    try:
        batch = run.examples.batch(0)
        assert batch.prompts == ["a photo of sks dog", "a photo of xon cat", "a photo of a dog", "a photo of a cat"]
        assert batch.num_class == 2
        folders = class_folders(run.cfg, torch.float32)
        assert [(p, n) for p, _, n in folders] == [("a photo of a dog", 2), ("a photo of a cat", 3)]
        assert all("class-images" in str(f) for _, f, _ in folders)  # both in the shared bank
    finally:
        release(run)


@pytest.mark.parametrize(
    "second, message",
    [
        ({"instance_prompt": None}, "subject 2: instance_prompt is missing"),
        ({"instance_dir": "nowhere"}, "subject 2: instance_dir nowhere is not a folder"),
        ({"colour": "green"}, "subject 2: unknown key 'colour'"),
        ({"instance_prompt": "a photo of sks dog"}, "subject 2: instance_prompt 'a photo of sks dog' is another subject's"),
        ({"num_class_images": 0}, "subject 2: num_class_images 0 must be"),
        ({"class_prompt": None}, "subject 2: class_prompt is missing or empty (needed with prior preservation)"),
    ],
)
def test_a_bad_entry_is_one_line_naming_it(second, message, photos, tmp_path, capsys):
    subjects = two_subjects(photos, tmp_path, **second)
    out = tmp_path / "run"
    code = main(["train", "--model", "tiny", "--subjects", str(subjects), "--with-prior-preservation",
                 "--output-dir", str(out)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"--subjects {subjects}: {message}" in err
    assert not out.exists()  # nothing written


def test_subjects_replace_the_single_subject_flags(photos, tmp_path):
    subjects = two_subjects(photos, tmp_path)
    with pytest.raises(UsageError, match="--subjects: replaces --instance-dir"):
        set_up(TrainConfig(model="tiny", subjects=str(subjects), instance_dir=str(photos), output_dir=str(tmp_path / "o")))


@pytest.mark.slow
def test_a_resumed_lokr_run_of_two_subjects_equals_an_uninterrupted_one_bitwise(photos, tmp_path):
    from safetensors.torch import load_file

    from dreambooth.training.loop import train

    subjects = two_subjects(photos, tmp_path)

    def cfg(out, steps, **more):
        return TrainConfig(model="tiny", subjects=str(subjects), output_dir=str(tmp_path / out), adapter="lokr", rank=2,
                           lokr_factor=4, with_prior_preservation=True, max_steps=steps, batch_size=2, num_samples=0,
                           learning_rate=1e-2, export="none", **more)  # fmt: skip

    whole = train(cfg("whole", 4))
    train(cfg("split", 2))
    split = train(cfg("split", 4, resume=True))
    a, b = load_file(str(whole / "pytorch_lora_weights.safetensors")), load_file(str(split / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and any(".lokr_w2_a" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
