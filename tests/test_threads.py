"""CPU threads: the choice for a model, --threads and OMP_NUM_THREADS obeyed and recorded, workloads of one process
dividing the cores."""

import threading

import pytest
import torch
import yaml

from dreambooth import threads
from dreambooth.cli import main


def test_shares_divide_the_cores():
    assert threads.shares([1, 1], 2) == [1, 1]
    assert threads.shares([2, 2], 2) == [1, 1]
    assert threads.shares([2], 2) == [2]
    assert threads.shares([8], 2) == [2]  # never more than the cores
    assert threads.shares([1, 16], 16) == [1, 15]  # a small want is met, the rest goes to the other
    assert threads.shares([16, 1, 16], 16) == [7, 1, 8]
    assert threads.shares([4, 4, 4], 2) == [1, 1, 1]  # more workloads than cores: one thread each


def test_choice_follows_the_flag_then_the_environment_then_the_model(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "cores", lambda: 8)
    assert threads.choose(0, "world") == (1, False)
    assert threads.choose(0, "tiny") == (1, False)
    assert threads.choose(0, "stable-diffusion-v1-5/stable-diffusion-v1-5") == (8, False)
    assert threads.choose(3, "world") == (3, True)
    assert threads.choose(12, "world") == (12, True)  # more than the cores, when asked: the user's choice
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert threads.choose(0, "world") == (5, True)
    assert threads.choose(2, "world") == (2, True)  # the flag over the environment
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert threads.choose(0, "some/model") == (8, False)


def test_workloads_in_one_process_divide_the_cores(monkeypatch):
    """The page's training and a scoring at once: each gets half, and the training takes the whole again after."""
    monkeypatch.setattr(threads, "cores", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen: dict[str, list[int]] = {"training": [], "scoring": []}
    scoring_in, scoring_done = threading.Event(), threading.Event()

    def training():
        with threads.workload(0, "a/real-size-model") as count:
            seen["training"].append(count)
            scoring_in.wait(30)
            threads.refresh()
            seen["training"].append(torch.get_num_threads())
            scoring_done.wait(30)
            threads.refresh()
            seen["training"].append(torch.get_num_threads())

    def scoring():
        with threads.workload(0, "another/real-size-model") as count:
            seen["scoring"].append(count)
            seen["scoring"].append(torch.get_num_threads())
            scoring_in.set()
            while len(seen["training"]) < 2:  # the training has taken its half
                threading.Event().wait(0.01)
        scoring_done.set()

    first = threading.Thread(target=training)
    first.start()
    while not seen["training"]:
        threading.Event().wait(0.01)
    second = threading.Thread(target=scoring)
    second.start()
    first.join(60)
    second.join(60)
    assert seen == {"training": [4, 2, 4], "scoring": [2, 2]}


def test_a_command_inside_another_stays_its_workload(monkeypatch):
    monkeypatch.setattr(threads, "cores", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    counts = []

    def bench():
        with threads.workload(0, "a/real-size-model") as outer:
            with threads.workload(0, "world") as inner:  # bench -> train on a small model
                counts.append((outer, inner, torch.get_num_threads(), len(threads._running)))
            counts.append(torch.get_num_threads())  # the outer one's count again

    worker = threading.Thread(target=bench)
    worker.start()
    worker.join(60)
    assert counts == [(4, 1, 1, 1), 4]
    assert threads._running == []


def train_args(photos, out, *extra):
    return ["train", "--instance-dir", str(photos), "--instance-prompt", "a photo of sks dog", "--output-dir", str(out),
            "--max-steps", "2", "--num-samples", "0", "--export", "none", *extra]  # fmt: skip


def trained_threads(photos, out) -> tuple[int, str]:
    card = (out / "README.md").read_text()
    return yaml.safe_load((out / "config.yaml").read_text())["threads"], card


@pytest.mark.parametrize(
    "flags, env, expected",
    [([], None, 1), (["--threads", "2"], None, 2), ([], "3", 3), (["--threads", "2"], "3", 2)],
    ids=["tiny-model-default", "flag", "OMP_NUM_THREADS", "flag-over-environment"],
)
def test_train_obeys_and_records_the_threads(photos, tmp_path, monkeypatch, flags, env, expected):
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    seen = []
    from dreambooth import TrainConfig, train
    from dreambooth.cli import build_parser, config_from_args

    cfg = config_from_args(TrainConfig, build_parser().parse_args(train_args(photos, tmp_path / "run", *flags)))
    train(cfg, on_event=lambda e: seen.append(torch.get_num_threads()) if e["kind"] == "step" else None)
    recorded, card = trained_threads(photos, tmp_path / "run")
    assert recorded == expected
    assert seen == [expected, expected]  # what torch used, step by step
    assert f"| CPU threads | {expected} |" in card


def test_bad_threads_is_one_line_and_writes_nothing(photos, tmp_path, capsys):
    for argv in (
        train_args(photos, tmp_path / "run", "--threads", "-1"),
        ["generate", "--prompt", "a dog", "--output-dir", str(tmp_path / "images"), "--threads", "-2"],
        ["demo", "--output-dir", str(tmp_path / "demo"), "--threads", "-1"],
        train_args(photos, tmp_path / "run", "--threads", "two"),
    ):
        assert main(argv) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and "--threads" in err[0], err
    assert list(tmp_path.iterdir()) == [photos]


def test_generate_records_the_threads(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert main(["generate", "--prompt", "a dog", "--output-dir", str(tmp_path / "images"), "--num-images", "1",
                 "--steps", "1", "--threads", "2"]) == 0  # fmt: skip
    assert yaml.safe_load((tmp_path / "images" / "config.yaml").read_text())["threads"] == 2


def test_a_count_the_user_gave_is_kept_and_the_others_share_what_it_leaves(monkeypatch):
    monkeypatch.setattr(threads, "cores", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    counts, asked_in, done = [], threading.Event(), threading.Event()

    def asked():
        with threads.workload(3, "world") as count:
            counts.append(("asked", count))
            asked_in.set()
            done.wait(30)

    worker = threading.Thread(target=asked)
    worker.start()
    asked_in.wait(30)
    with threads.workload(0, "a/real-size-model") as count:
        counts.append(("chosen", count))
    done.set()
    worker.join(60)
    assert counts == [("asked", 3), ("chosen", 1)]


def test_the_calling_thread_gets_its_count_back():
    before = torch.get_num_threads()
    with threads.workload(before + 1, "world") as count:
        assert count == torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before


def test_a_small_model_draws_on_every_core_and_trains_on_one(monkeypatch):
    monkeypatch.setattr(threads, "cores", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen = []

    def run():
        with threads.workload(0, "world"):
            seen.append(torch.get_num_threads())
            with threads.sampling():
                seen.append(torch.get_num_threads())
            seen.append(torch.get_num_threads())
        with threads.workload(2, "world"), threads.sampling():  # the user's count, drawing too
            seen.append(torch.get_num_threads())

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(60)
    assert seen == [1, 4, 1, 2]


def test_the_wait_policy_is_passive_for_the_embedded_models_and_the_page_only():
    assert threads.wait_passively("train", "world") and threads.wait_passively("generate", "tiny-sdxl")
    assert threads.wait_passively("demo", None) and threads.wait_passively("ui", None)
    assert not threads.wait_passively("train", "stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert not threads.wait_passively("evaluate", None)  # real-size scoring models


@pytest.mark.parametrize(
    "argv, before, after",
    [
        (["train", "--model", "world"], None, "PASSIVE"),
        (["train"], None, "PASSIVE"),  # the default model, tiny
        (["train", "--model", "some/real-size-model"], None, None),
        (["train", "--model", "world"], "ACTIVE", "ACTIVE"),  # the user's own setting stays
    ],
)
def test_the_command_line_sets_the_wait_policy_before_the_command_runs(monkeypatch, capsys, argv, before, after):
    import os

    environment = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if before:
        environment["OMP_WAIT_POLICY"] = before
    monkeypatch.setattr(os, "environ", environment)
    assert main(argv) == 2  # no photos: refused before anything loads, after the policy is set
    assert environment.get("OMP_WAIT_POLICY") == after
