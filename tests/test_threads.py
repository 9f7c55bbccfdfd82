"""CPU threads: the free cores chosen, --threads and OMP_NUM_THREADS obeyed and recorded, workloads of one process
dividing the cores, other processes' load measured."""

import subprocess
import sys
import threading
import time

import pytest
import torch
import yaml

from dreambooth import threads
from dreambooth.cli import main


@pytest.fixture(autouse=True)
def nothing_else_busy(monkeypatch):
    """The tests' own process pool keeps the machine busy: each test says what other processes hold."""
    monkeypatch.setattr(threads, "busy_elsewhere", lambda: 0.0)


def test_shares_divide_the_cores():
    assert threads.shares([1, 1], 2) == [1, 1]
    assert threads.shares([2, 2], 2) == [1, 1]
    assert threads.shares([2], 2) == [2]
    assert threads.shares([8], 2) == [2]  # never more than the cores
    assert threads.shares([1, 16], 16) == [1, 15]  # a small want is met, the rest goes to the other
    assert threads.shares([16, 1, 16], 16) == [7, 1, 8]
    assert threads.shares([4, 4, 4], 2) == [1, 1, 1]  # more workloads than cores: one thread each


def test_choice_follows_the_flag_then_the_environment_then_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "cores", lambda: 8)
    assert threads.choose(0) == (8, False)
    assert threads.choose(3) == (3, True)
    assert threads.choose(12) == (12, True)  # more than the cores, when asked: the user's choice
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert threads.choose(0) == (5, True)
    assert threads.choose(2) == (2, True)  # the flag over the environment
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert threads.choose(0) == (8, False)


def test_workloads_in_one_process_divide_the_cores(monkeypatch):
    """The page's training and a scoring at once: each gets half, and the training takes the whole again after."""
    monkeypatch.setattr(threads, "cores", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen: dict[str, list[int]] = {"training": [], "scoring": []}
    scoring_in, scoring_done = threading.Event(), threading.Event()

    def training():
        with threads.workload(0) as count:
            seen["training"].append(count)
            scoring_in.wait(30)
            threads.refresh()
            seen["training"].append(torch.get_num_threads())
            scoring_done.wait(30)
            threads.refresh()
            seen["training"].append(torch.get_num_threads())

    def scoring():
        with threads.workload(0) as count:
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
        with threads.workload(0) as outer:
            with threads.workload(1) as inner:  # bench -> train with --threads 1
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
    [([], None, 2), (["--threads", "1"], None, 1), ([], "3", 3), (["--threads", "1"], "3", 1)],
    ids=["chosen", "flag", "OMP_NUM_THREADS", "flag-over-environment"],
)
def test_train_obeys_and_records_the_threads(photos, tmp_path, monkeypatch, flags, env, expected):
    monkeypatch.setattr(threads, "cores", lambda: 2)
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
        with threads.workload(3) as count:
            counts.append(("asked", count))
            asked_in.set()
            done.wait(30)

    worker = threading.Thread(target=asked)
    worker.start()
    asked_in.wait(30)
    with threads.workload(0) as count:
        counts.append(("chosen", count))
    done.set()
    worker.join(60)
    assert counts == [("asked", 3), ("chosen", 1)]


def test_the_calling_thread_gets_its_count_back():
    before = torch.get_num_threads()
    with threads.workload(before + 1) as count:
        assert count == torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before


def test_a_chosen_count_leaves_the_cores_other_processes_hold(monkeypatch):
    """Another process takes cores: the next step runs on fewer threads, and on every core again once it ends. A count
    the user gave stays as it is."""
    monkeypatch.setattr(threads, "cores", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    elsewhere = [0.0]
    monkeypatch.setattr(threads, "busy_elsewhere", lambda: elsewhere[0])
    seen = []

    def run():
        with threads.workload(0):
            for busy in (0.0, 0.4, 1.2, 2.6, 3.9, 0.3):
                elsewhere[0] = busy
                threads.refresh()
                seen.append(torch.get_num_threads())
        with threads.workload(3):
            threads.refresh()
            seen.append(torch.get_num_threads())

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(60)
    # a core counts as taken when more than half of it is busy; at least one thread always
    assert seen == [4, 4, 3, 1, 1, 4, 3]


def test_drawing_takes_its_threads_again_at_every_denoising_step(monkeypatch):
    from dreambooth.families.sd import build_tiny
    from dreambooth.sampling import draw

    calls = []
    monkeypatch.setattr(threads, "refresh", lambda: calls.append(1))
    draw(build_tiny(), "a dog", num=3, seed=0, steps=4, guidance=2.0, resolution=32, batch_size=2)
    assert len(calls) == 2 + 2 * 4  # before each batch, and after each of its steps


def test_other_processes_load_is_their_cpu_time_over_the_last_second(monkeypatch):
    monkeypatch.undo()  # the real measure
    with threads._lock:
        threads._readings.clear()
        threads._readings.extend([(10.0, 100.0, 5.0), (10.5, 100.8, 5.4), (11.0, 101.5, 5.5)])
    try:
        assert threads.busy_elsewhere() == pytest.approx(1.0)  # 1.5 s of the cores' time, 0.5 s of it this process's
    finally:
        with threads._lock:
            threads._readings.clear()
    assert threads.machine_busy_seconds({0}) > 0  # this machine's /proc/stat, read


@pytest.mark.slow  # seconds of real time: the full suite keeps it, the fast lane does not
def test_a_busy_process_beside_a_chosen_workload_is_seen_and_the_reading_stops_after(monkeypatch):
    monkeypatch.undo()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with threads.workload(0):
            time.sleep(1.5)
            seen = threads.busy_elsewhere()
    finally:
        busy.kill()
    assert seen >= 0.5  # the spinning child, at least the half core a 2-core machine gives it beside another
    for _ in range(40):
        if threads._sampler is None:
            break
        time.sleep(0.05)
    assert threads._sampler is None and not threads._readings
