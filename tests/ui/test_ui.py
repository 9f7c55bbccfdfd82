"""The web page (`dreambooth ui`): upload validation and the job queue without a browser, then the whole
page in headless Chromium against a live server: photos -> training -> images -> LoRA download."""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from dreambooth.config import TrainConfig
from dreambooth.ui import runs
from dreambooth.ui.jobs import Job, Jobs, seconds_left, status_line
from dreambooth.ui.uploads import MAX_BYTES, MAX_PHOTOS, Rejected, check_photo, shown_name, store_photos

SAMPLE = sorted((Path(__file__).parents[2] / "src" / "dreambooth" / "assets" / "sample_subject" / "dog").glob("*.jpg"))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


# ---------------------------------------------------------------- uploads


def test_store_photos_renames_and_skips_bad_files(tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("not an image")
    png = tmp_path / "shot.jpeg"  # a PNG under a JPEG name: stored with the suffix of what it is
    Image.new("RGB", (32, 32), "red").save(png, format="PNG")
    sources = [("../../etc/evil.jpg", SAMPLE[0]), ("notes.jpg", fake), ("shot.jpeg", png)]
    stored, problems = store_photos(sources, tmp_path / "dest")
    assert [p.name for p in stored] == ["photo-01.jpg", "photo-02.png"]
    assert all(p.parent == tmp_path / "dest" for p in stored)
    assert problems == ["notes.jpg is not a readable image; skipped"]


def test_store_photos_caps_the_count(tmp_path):
    sources = [(f"{i}.jpg", SAMPLE[i % len(SAMPLE)]) for i in range(MAX_PHOTOS + 2)]
    stored, problems = store_photos(sources, tmp_path / "dest")
    assert len(stored) == MAX_PHOTOS and problems == [f"{i}.jpg left out: at most {MAX_PHOTOS} photos are used" for i in (10, 11)]


def test_check_photo_refuses_big_tiny_and_non_images(tmp_path):
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(MAX_BYTES + 1)
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (4, 4)).save(tiny)
    text = tmp_path / "a.txt"
    text.write_text("hello")
    for path, words in [(big, "MB"), (tiny, "too small"), (text, "not an image file")]:
        with pytest.raises(Rejected, match=words):
            check_photo(path)
    assert check_photo(SAMPLE[0]) == ".jpg"


def test_shown_name_keeps_only_the_file_name():
    assert shown_name("C:\\Users\\me\\dog.jpg") == "dog.jpg"
    assert shown_name("/a/b/\x1b[31mred.jpg") == "[31mred.jpg"
    assert len(shown_name("x" * 500)) == 80


def test_run_paths_come_only_from_the_listing(tmp_path):
    run = tmp_path / "cli-run"
    run.mkdir()
    (run / "pytorch_lora_weights.safetensors").write_bytes(b"")
    (tmp_path / "runs" / "x" / "checkpoints" / "c").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "checkpoints" / "c" / "pytorch_lora_weights.safetensors").write_bytes(b"")
    assert runs.find_runs(tmp_path) == ["cli-run"]
    assert runs.run_path(tmp_path, "cli-run") == run
    assert runs.run_path(tmp_path, "../cli-run") is None and runs.run_path(tmp_path, str(run)) is None


def test_the_downloads_say_which_file_is_for_which_program(tmp_path):
    from dreambooth.ui.generate_tab import run_info

    run = tmp_path / "runs" / "dog"
    run.mkdir(parents=True)
    for name in ("pytorch_lora_weights.safetensors", "lora_kohya.safetensors"):
        (run / name).write_bytes(b"")
    info, _, files = run_info(tmp_path, "runs/dog")
    assert [Path(f).name for f in files] == ["pytorch_lora_weights.safetensors", "lora_kohya.safetensors"]
    assert info.endswith(
        "Downloads: pytorch_lora_weights.safetensors for diffusers, lora_kohya.safetensors for ComfyUI, A1111 / Forge and sd-scripts."
    )


# ---------------------------------------------------------------- the job queue


def fake_train(log, gate=None):
    """Stands in for dreambooth.train: reports steps, honours the stop event, can wait on a gate."""

    def train(cfg, on_event, stop_event):
        log.append(cfg.output_dir)
        for step in range(1, cfg.max_steps + 1):
            if gate is not None:
                gate.wait(5)
            on_event({"kind": "step", "step": step, "max_steps": cfg.max_steps, "loss": 0.5, "seconds": step * 0.01})
            if stop_event.is_set():
                raise KeyboardInterrupt
        on_event({"kind": "done", "path": cfg.output_dir})
        return Path(cfg.output_dir)

    return train


def wait_for(condition, timeout=5.0):
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_jobs_run_one_at_a_time_in_order():
    log, gate = [], threading.Event()
    jobs = Jobs(fake_train(log, gate))
    a = jobs.submit("a", TrainConfig(output_dir="a", max_steps=3))
    b = jobs.submit("b", TrainConfig(output_dir="b", max_steps=3))
    c = jobs.submit("c", TrainConfig(output_dir="c", max_steps=3))
    assert wait_for(lambda: jobs.snapshot()[0].state == "running")
    assert [j.state for j in jobs.snapshot()] == ["running", "queued", "queued"]
    assert (jobs.place(a.id), jobs.place(b.id), jobs.place(c.id)) == (0, 1, 2)
    assert "place 2 in line" in status_line(jobs.snapshot()[2], jobs.place(c.id))
    jobs.stop(b.id)  # a queued job is cancelled and never starts
    gate.set()
    assert wait_for(lambda: all(j.state in ("done", "cancelled") for j in jobs.snapshot()))
    assert [j.state for j in jobs.snapshot()] == ["done", "cancelled", "done"] and log == ["a", "c"]
    assert jobs.snapshot()[0].step == 3 and jobs.snapshot()[0].output == "a"


def page_start(workspace, jobs, files, folder, noun="dog", identifier="sks", model="tiny", photo_roots=(), **changes):
    """Start pressed with the page's values for `model` (and `changes` to them), as the browser sends them."""
    from dreambooth.ui import controls, train_tab

    shown = {**train_tab.page_settings(model, noun), **changes}
    return train_tab.start(workspace, jobs, files, folder, noun, identifier, *[shown[n] for n in controls.SHOWN],
                           photo_roots=photo_roots)  # fmt: skip


def test_choosing_an_embedded_model_fills_in_its_recommended_settings(tmp_path):
    from dreambooth.ui import controls, train_tab

    def some(model, noun=""):
        values = dict(zip([n for n in controls.SHOWN if n != "model"], train_tab.defaults_for(model, noun)))
        return tuple(values[n] for n in ("max_steps", "rank", "learning_rate", "text_encoder_lr", "resolution",
                                         "train_text_encoder", "num_class_images", "snr_gamma", "batch_size"))  # fmt: skip

    assert some("world", "car") == (1000, 8, 1e-3, 1e-3, 32, True, 100, 5.0, 2)  # the world's recommended settings
    assert some("world", "dog") == (1000, 8, 1e-3, 1e-3, 32, True, 400, 5.0, 2)  # the demo's for one of its classes
    assert some("tiny") == (300, 16, 5e-4, 1e-4, 0, False, 100, 0.0, 1)  # the general defaults
    log = []
    jobs = Jobs(fake_train(log))
    message = page_start(tmp_path, jobs, [str(p) for p in SAMPLE], "", model="world", noun="car", max_steps=3)
    assert "queued" in message, message
    cfg = jobs.snapshot()[0].cfg
    assert (cfg.snr_gamma, cfg.batch_size, cfg.max_steps, cfg.guidance_scale) == (5.0, 2, 3, 4.0)
    assert wait_for(lambda: jobs.snapshot()[0].state == "done")


def test_stop_then_resume_continues_the_same_run():
    log, gate = [], threading.Event()
    jobs = Jobs(fake_train(log, gate))
    job = jobs.submit("a", TrainConfig(output_dir="a", max_steps=50))
    assert wait_for(lambda: jobs.snapshot()[0].state == "running")
    jobs.stop(job.id)
    gate.set()
    assert wait_for(lambda: jobs.snapshot()[0].state == "stopped")
    assert "Resume" in jobs.snapshot()[0].message
    again = jobs.resume(job.id)
    assert again is not None and again.cfg.resume and again.cfg.output_dir == "a"
    assert wait_for(lambda: jobs.snapshot()[1].state == "done")
    assert jobs.resume(again.id) is None  # a finished run has nothing to resume


def test_jobs_outlive_the_server(tmp_path):
    """The job list is kept in the state file: a new Jobs reads it back, the run that was training is stopped (Resume
    continues it) with the step its progress.jsonl reached, the queued one runs, and new ids follow the old."""
    from dreambooth.training import progress
    from dreambooth.ui.jobs import INTERRUPTED

    state, gate = tmp_path / "jobs.json", threading.Event()
    first = Jobs(fake_train([], gate), state_file=state)
    a = first.submit("a", TrainConfig(output_dir=str(tmp_path / "a"), max_steps=50, learning_rate=3e-4), ["a note"])
    first.submit("b", TrainConfig(output_dir=str(tmp_path / "b"), max_steps=2))
    assert wait_for(lambda: first.snapshot()[0].state == "running")
    assert json.loads(state.read_text())["jobs"][0]["state"] == "running"
    (tmp_path / "a").mkdir()
    progress.append(tmp_path / "a", 20, 50, 0.25, 3.0)  # what the run wrote before the server went away

    log: list[str] = []
    second = Jobs(fake_train(log), state_file=state)  # the first one's worker is stuck at its gate: a killed server
    assert wait_for(lambda: second.snapshot()[1].state == "done") and log == [str(tmp_path / "b")]
    stopped = second.snapshot()[0]
    assert (stopped.state, stopped.message, stopped.step, stopped.loss) == ("stopped", INTERRUPTED, 20, 0.25)
    assert (stopped.name, stopped.notes, stopped.cfg.learning_rate, stopped.cfg.max_steps) == ("a", ["a note"], 3e-4, 50)
    again = second.resume(a.id)
    assert again is not None and again.id == 3 and again.cfg.resume and again.cfg.output_dir == str(tmp_path / "a")
    assert wait_for(lambda: second.snapshot()[2].state == "done")
    assert [j["state"] for j in json.loads(state.read_text())["jobs"]] == ["stopped", "done", "done"]


def test_a_damaged_job_list_starts_empty_with_a_warning(tmp_path, capsys):
    state = tmp_path / "jobs.json"
    state.write_text('{"jobs": [{"id": 1, "cfg": {"no_such_setting": 1}}]}')
    assert Jobs(fake_train([]), state_file=state).snapshot() == []
    err = capsys.readouterr().err
    assert "jobs.json: not a job list this version reads (a job's settings: unknown key 'no_such_setting'" in err
    assert "moved to jobs.json.unreadable-" in err and len(err.strip().splitlines()) == 1
    aside = list(tmp_path.glob("jobs.json.unreadable-*"))
    assert len(aside) == 1 and "no_such_setting" in aside[0].read_text() and not state.exists()


def test_shutdown_stops_the_running_job_and_keeps_the_queue(tmp_path):
    state, gate = tmp_path / "jobs.json", threading.Event()
    jobs = Jobs(fake_train([], gate), state_file=state)
    jobs.submit("a", TrainConfig(output_dir="a", max_steps=1000))
    jobs.submit("b", TrainConfig(output_dir="b", max_steps=3))
    assert wait_for(lambda: jobs.snapshot()[0].state == "running")
    gate.set()
    jobs.shutdown(timeout=5)
    assert [j.state for j in jobs.snapshot()] == ["stopped", "queued"] and jobs.snapshot()[0].step < 1000
    assert [j["state"] for j in json.loads(state.read_text())["jobs"]] == ["stopped", "queued"]


def test_the_loss_curve_and_runs_started_outside_the_page(tmp_path):
    from dreambooth.training import progress
    from dreambooth.ui import train_tab

    assert train_tab.loss_curve([], 100) == ""
    svg = train_tab.loss_curve([{"step": 10, "loss": 0.5}, {"step": 20, "loss": 0.25}], 40)
    # steps 10 and 20 of 40 across the 352 px inside the frame, the highest loss at the top
    assert "data-points='2'" in svg and "points='92.0,4.0 180.0,116.0'" in svg and "loss 0.2500 – 0.5000 over steps 0–40" in svg
    cli = tmp_path / "cli-run"
    cli.mkdir()
    progress.append(cli, 10, 30, 0.4, 2.0)
    progress.append(cli, 20, 30, 0.35, 4.5)
    done = tmp_path / "done-run"
    done.mkdir()
    progress.append(done, 30, 30, 0.3, 6.0)
    assert runs.active_runs(tmp_path) == [cli]
    lines = train_tab.outside_runs(tmp_path, [])
    assert len(lines) == 1 and "cli-run (started outside the page): step 20/30 · loss 0.3500 · 2 s left" in lines[0]
    mine = Job(1, "mine", TrainConfig(output_dir=str(cli)))
    assert train_tab.outside_runs(tmp_path, [mine]) == []  # the page's own run is shown as its job


def test_a_failing_job_does_not_stop_the_worker():
    def train(cfg, on_event, stop_event):
        if cfg.output_dir == "bad":
            raise RuntimeError("boom\nsecond line")
        return Path(cfg.output_dir)

    jobs = Jobs(train)
    jobs.submit("bad", TrainConfig(output_dir="bad"))
    jobs.submit("good", TrainConfig(output_dir="good"))
    assert wait_for(lambda: [j.state for j in jobs.snapshot()] == ["failed", "done"])
    assert jobs.snapshot()[0].message == "RuntimeError: boom"


def test_time_left_leaves_out_loading():
    job = Job(1, "a", TrainConfig(), max_steps=10, state="running")
    assert "preparing" in status_line(job)
    job.first, job.step, job.seconds, job.loss = (0, 0.0), 4, 8.0, 0.25
    assert seconds_left(job) == pytest.approx(12.0)
    assert status_line(job) == "a: step 4/10 · loss 0.2500 · 12 s left"


def test_suggest_another_proposes_the_weakest_measured_rare_token():
    """On an embedded model the page measures its suggestions as `identifier --measure` does, beside the word in the
    box; on a real model it names that command instead of loading gigabytes at a click."""
    from dreambooth.training import identifier_prior as P
    from dreambooth.ui import train_tab

    word, text = train_tab.suggest_measured(3, "tiny", "dog", "white")
    pipe, family = train_tab.measuring_pipeline("tiny")
    pool = [w for w, _ in train_tab.candidates_of(pipe, family, 3)]
    ratios = P.relative_shifts(pipe, family, [*pool, "white"], "dog")
    assert len(pool) == train_tab.MEASURED_POOL and word == min(pool, key=ratios.__getitem__)
    assert f"**{word}** {ratios[word]:.2f}" in text and f"**white**: {ratios['white']:.2f}" in text
    assert train_tab.suggest_measured(4, "tiny", "dog")[0] in [w for w, _ in train_tab.candidates_of(pipe, family, 4)]

    real = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    word, text = train_tab.suggest_measured(3, real, " red  dog")
    assert word == train_tab.suggest(3) and f"dreambooth identifier --measure --model {real} --class-noun 'red dog'" in text
    assert train_tab.suggest_measured(3, "tiny", " ") == (
        train_tab.suggest(3),
        "Type the class noun to measure identifiers against it",
    )


def test_on_a_cpu_the_page_proposes_the_world_and_its_sample_subject(tmp_path, monkeypatch):
    """The sample subject is the demo's rendered photos, and Start with the page's first values trains as the demo does."""
    import dataclasses

    import numpy as np
    import torch

    from dreambooth.ui import train_tab
    from dreambooth.world import DEMO_STEPS
    from dreambooth.world.demo import demo_settings, write_photos
    from dreambooth.world.render import CLASSES

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert train_tab.proposed_model() == "tiny"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train_tab.proposed_model() == "world"
    workspace = tmp_path / "ws"
    for cls in CLASSES:
        files, noun, identifier, model, message, *_ = train_tab.sample_subject(workspace, cls)
        demo = sorted(write_photos(cls, tmp_path / "demo" / cls).glob("*.png"))  # the photos and their masks
        assert [Path(f).name for f in files] == [p.name for p in demo] and len(files) == 10
        assert all(np.array_equal(np.asarray(Image.open(f)), np.asarray(Image.open(d))) for f, d in zip(files, demo))
        assert (noun, identifier, model) == (cls, "sks", "world") and f" {cls}, which its base model never drew" in message
    assert runs.find_runs(workspace) == []

    # the page's values after Sample subject (the cat), Start pressed at once: the demo's settings, field by field
    jobs = Jobs(fake_train([]))
    files, noun, identifier, model, _, *values = train_tab.sample_subject(workspace, "cat")
    message = train_tab.start(workspace, jobs, files, "", noun, identifier, model, *values)
    assert "queued with 5 photos" in message and "Warning" not in message, message
    cfg = jobs.snapshot()[0].cfg
    demo = demo_settings("cat", tmp_path / "demo-run")
    differ = {f.name for f in dataclasses.fields(TrainConfig) if getattr(cfg, f.name) != getattr(demo, f.name)}
    assert differ == {"instance_dir", "output_dir", "class_prompts_file", "validation_prompts"}, differ
    for name in ("class_prompts_file", "validation_prompts"):  # the same prompts, in the page's files
        assert Path(getattr(cfg, name)).read_text() == Path(getattr(demo, name)).read_text(), name
    stored = sorted(Path(cfg.instance_dir).iterdir())
    assert [p.name for p in stored] == [f"photo-{i:02d}{s}" for i in range(1, 6) for s in (".mask.png", ".png")]
    demo_masks = sorted((tmp_path / "demo" / "cat").glob("*.mask.png"))
    assert all(np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))) for a, b in zip(stored[::2], demo_masks))
    assert DEMO_STEPS == cfg.max_steps


# ---------------------------------------------------------------- the page in a browser


def browser_missing() -> str:
    for module in ("gradio", "playwright"):  # found, not imported: collecting the file stays quick
        if importlib.util.find_spec(module) is None:
            return f"needs the ui extra and playwright (pip install -e '.[test]'): no {module}"
    if not os.path.exists(CHROMIUM):
        return "needs Chromium (apt-get install -y chromium)"
    return ""


needs_browser = pytest.mark.skipif(bool(browser_missing()), reason=browser_missing() or "ok")
needs_gradio = pytest.mark.skipif(
    importlib.util.find_spec("gradio") is None, reason="needs the ui extra (pip install -e '.[ui]')"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_ui(workspace: Path, *flags: str):
    """`dreambooth ui` on a free port, as a user starts it: yields its address; its log is in the failure message."""
    log = open(workspace.parent / "ui.log", "w")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dreambooth.cli", "ui", "--port", str(port), "--workspace", str(workspace), *flags],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                break
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.25)
        else:
            pytest.fail("the page did not come up in 60 s")
        if proc.poll() is not None:
            pytest.fail(f"dreambooth ui exited: {(workspace.parent / 'ui.log').read_text()[-2000:]}")
        yield url
    finally:
        proc.terminate()
        try:  # the server first lets a running job finish its step (or validation) and save: up to its 60 s
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("workspace")
    with serve_ui(workspace) as url:
        yield url, workspace


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module: Playwright's sync API runs one instance per thread."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def page(server, browser):
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    outside = []  # the page must make no calls beyond its own server (fonts, analytics, CDNs)
    pg.on("request", lambda r: None if r.url.startswith((server[0], "data:", "blob:")) else outside.append(r.url))
    pg.goto(server[0])
    pg.wait_for_selector("#photos")
    yield pg
    context.close()
    assert outside == []


def shoot(page, tmp_path, name: str, readme: bool = True) -> None:
    """Screenshots are test output; DREAMBOOTH_UI_SCREENSHOTS=docs also writes the README's copies there (those of
    the world's flow: they show real scenes and scores)."""
    page.screenshot(path=str(tmp_path / f"ui-{name}.png"), full_page=True)
    folder = os.environ.get("DREAMBOOTH_UI_SCREENSHOTS")
    if folder and readme:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / f"ui-{name}.png", Path(folder) / f"ui-{name}.png")


@needs_browser
@pytest.mark.slow
def test_the_world_first_on_a_cpu(page):
    """Without a GPU the page opens on the world with the demo's settings; Sample subject fills in the rest."""
    assert page.input_value("#cfg-model input") == "world" and page.input_value("#cfg-max-steps input") == "1000"
    assert page.is_visible("#cfg-max-steps") and not page.is_visible("#cfg-adapter")  # the rest under Advanced
    open_group(page, "Memory and speed")  # quantization is CUDA only: shown, not offered, on a CPU
    assert page.is_disabled("#cfg-base-quantization input")
    page.click("#subject input")
    page.get_by_role("option", name="teapot").click()
    page.click("#sample")
    page.wait_for_selector("#photo-check:has-text('5 usable photos')")
    page.wait_for_function("document.querySelector('#class-noun textarea').value === 'teapot'")
    assert page.input_value("#identifier textarea") == "sks" and "red dotted teapot" in page.inner_text("#train-message")
    page.wait_for_selector("#tokens:has-text('a photo of sks teapot')")
    page.click("#suggest")  # measured on the world's encoder, beside the sample's `sks`
    page.wait_for_selector("#identifier-prior:has-text('Measured on world for teapot')", timeout=120_000)
    suggested = page.input_value("#identifier textarea")
    assert suggested != "sks" and f"{suggested} " in page.inner_text("#identifier-prior")
    assert "sks" in page.inner_text("#identifier-prior").split("The one you had")[-1]
    page.wait_for_selector(f"#tokens:has-text('a photo of {suggested} teapot')")
    page.fill("#identifier textarea", "")
    page.type("#identifier textarea", "zzx")  # typing makes the measure stale: it goes (`fill` is not typing)
    page.wait_for_selector("#identifier-prior:has-text('Measured')", state="detached", timeout=10_000)
    page.reload()
    page.wait_for_selector("#photos")


@needs_browser
@pytest.mark.slow
def test_only_unreadable_photos_start_nothing(page, tmp_path):
    fake = tmp_path / "holiday.jpg"
    fake.write_text("this is text, not a photo")
    page.set_input_files("#photos input[type=file]", [str(fake)])
    page.wait_for_selector("#photo-check:has-text('holiday.jpg')")
    page.click("#start")
    message = page.locator("#train-message")
    message.locator("text=training not started").wait_for()
    assert "holiday.jpg" in message.inner_text()
    page.reload()
    page.wait_for_selector("#photos")


@needs_browser
@pytest.mark.slow
def test_train_generate_download(page, server, tmp_path):
    url, workspace = server
    fake = tmp_path / "notes.jpg"
    fake.write_text("plain text with an image's name")
    page.fill("#cfg-model input", "tiny")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('#cfg-max-steps input').value === '300'")  # tiny's settings are in
    page.set_input_files("#photos input[type=file]", [str(p) for p in SAMPLE] + [str(fake)])
    page.wait_for_selector("#photo-check:has-text('notes.jpg')")  # the bad file, named, before training
    assert "5 usable photos" in page.inner_text("#photo-check")
    assert "a photo of" in page.inner_text("#tokens")
    for box, value in [("#cfg-max-steps", "6"), ("#cfg-num-class-images", "2")]:
        page.fill(f"{box} input", value)
    open_group(page, "Validation")
    page.fill("#cfg-validation-prompt textarea", "a photo of sks dog")
    for box, value in [("#cfg-validation-steps", "3"), ("#cfg-num-validation-images", "2")]:
        page.fill(f"{box} input", value)
    assert not page.is_checked("#cfg-with-prior-preservation input")  # the command line's default, off on tiny
    page.check("#cfg-with-prior-preservation input")
    page.click("#start")
    page.wait_for_selector("#train-message:has-text('queued with 5 photos')")
    assert "notes.jpg" in page.inner_text("#train-message")

    seen = set()
    deadline = time.time() + 90
    while time.time() < deadline:
        state = (
            page.get_attribute("#train-status .train-status", "data-state")
            if page.locator("#train-status .train-status").count()
            else None
        )
        value = page.get_attribute("#train-status progress", "value") if page.locator("#train-status progress").count() else None
        seen.add(value)
        if state in ("done", "failed", "stopped"):
            break
        time.sleep(0.25)
    status = page.inner_text("#train-status")
    assert state == "done", status
    assert page.get_attribute("#train-status progress", "value") == page.get_attribute("#train-status progress", "max") == "6"
    run = runs.find_runs(workspace)[0]
    saved = runs.run_config(workspace / run)  # what the job got from the page's fields
    assert (saved["max_steps"], saved["validation_prompt"], saved["validation_steps"], saved["num_validation_images"],
            saved["with_prior_preservation"]) == (6, "a photo of sks dog", 3, 2, True)  # fmt: skip
    written = sorted(p.name for p in (workspace / run / "validation").glob("step-*.png"))
    assert written == ["step-000003.png", "step-000006.png"]  # validation grids at steps 3 and 6
    # shown by the next poll of the page's 1 s timer; a busy machine (the suite's other process) can delay a poll
    page.wait_for_selector("#validations img", state="attached", timeout=90_000)
    shoot(page, tmp_path, "train", readme=False)
    assert run.startswith("runs/dog-") and (workspace / run / "config.yaml").is_file()
    assert len(list((workspace / "uploads" / Path(run).name).iterdir())) == 5

    page.get_by_role("tab", name="Generate").click()
    page.wait_for_selector("#gen-prompt textarea")
    page.wait_for_function("document.querySelector('#gen-prompt textarea').value.includes('a photo of')")
    page.fill("#gen-prompt textarea", page.input_value("#gen-prompt textarea") + " on the grass")
    page.fill("#gen-num input", "2")
    page.fill("#gen-steps input", "4")
    page.click("#generate")
    page.wait_for_selector("#gen-message:has-text('2 images')", timeout=60_000)
    assert page.locator("#gallery img").count() >= 2
    shoot(page, tmp_path, "generate", readme=False)
    with page.expect_download() as info:
        page.click("#lora-files td[aria-label='pytorch_lora_weights.safetensors'] + td a")
    lora = tmp_path / "download" / "pytorch_lora_weights.safetensors"
    info.value.save_as(lora)

    from dreambooth.families.sd import build_tiny as build_tiny_pipeline

    pipe = build_tiny_pipeline()
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name)
    assert any("lora" in name for name, _ in pipe.unet.named_parameters())

    page.get_by_role("tab", name="Evaluate").click()
    page.click("#score")
    page.wait_for_selector("#eval-message:has-text('Error')", timeout=60_000)
    text = page.inner_text("#eval-message")
    assert len(text.strip().splitlines()) == 1 and "dino" in text.lower(), text  # evaluate's one-line message
    assert "DreamBooth (Stable Diffusion)" in page.inner_text("#scores")
    shoot(page, tmp_path, "evaluate", readme=False)

    # A `dreambooth bench` report anywhere in the workspace is shown in the Evaluate tab.
    from dreambooth.evaluation import bench_report

    settings = {
        "model": "tiny",
        "max_steps": 6,
        "with_prior_preservation": True,
        "identifier": "sks",
        "images_per_prompt": 2,
        "num_prompts": 1,
        "steps": 4,
        "guidance": 7.5,
        "seed": 0,
    }
    bench_report.write(
        workspace / "bench",
        [
            {
                "subject": "dog",
                "class": "dog",
                "kind": "live",
                "dino": 0.5,
                "clip_i": 0.6,
                "clip_t": 0.2,
                "pres": None,
                "div": None,
            }
        ],
        settings,
    )
    page.get_by_role("tab", name="Train").click()
    page.get_by_role("tab", name="Evaluate").click()
    page.frame_locator("#bench-report iframe").locator("h1:has-text('DreamBench results')").wait_for()


@pytest.mark.slow
def test_stop_and_resume_a_real_training(photos, tmp_path):
    """The worker thread stops dreambooth.train with a checkpoint, and Resume finishes the same run."""
    from dreambooth.lora.files import WEIGHT_NAME

    jobs = Jobs()
    cfg = TrainConfig(
        model="tiny",
        instance_dir=str(photos),
        instance_prompt="a photo of sks dog",
        output_dir=str(tmp_path / "run"),
        max_steps=40,
        num_samples=0,
    )
    job = jobs.submit("run", cfg)
    assert wait_for(lambda: jobs.snapshot()[0].step >= 2, timeout=120)
    jobs.stop(job.id)
    assert wait_for(lambda: jobs.snapshot()[0].state == "stopped", timeout=60), jobs.snapshot()[0].message
    stopped_at = jobs.snapshot()[0].step
    assert stopped_at < 40 and list((tmp_path / "run" / "checkpoints").iterdir())
    jobs.resume(job.id)
    assert wait_for(lambda: jobs.snapshot()[1].state in ("done", "failed"), timeout=180)
    resumed = jobs.snapshot()[1]
    assert resumed.state == "done", resumed.message
    assert resumed.first[0] >= stopped_at and resumed.step == 40 and (tmp_path / "run" / WEIGHT_NAME).is_file()


def test_ui_command_checks_its_flags(capsys):
    from dreambooth.cli import main
    from dreambooth.ui.server import parse_auth

    assert parse_auth("me:pass:word") == ("me", "pass:word") and parse_auth("") is None
    assert main(["ui", "--auth", "nopassword"]) == 2
    assert "--auth: pass user:password" in capsys.readouterr().err
    assert main(["ui", "--port", "0"]) == 2


# ---------------------------------------------------------------- safe when shared


def test_an_open_host_needs_auth_or_no_auth(tmp_path, capsys):
    from dreambooth.cli import main

    workspace = tmp_path / "ws"
    assert main(["ui", "--host", "0.0.0.0", "--workspace", str(workspace)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "--host 0.0.0.0" in err and "--auth user:password" in err and "--no-auth" in err
    assert main(["ui", "--host", "0.0.0.0", "--auth", "me:pw", "--no-auth", "--workspace", str(workspace)]) == 2
    assert "--auth and --no-auth" in capsys.readouterr().err
    missing = tmp_path / "no-such-photos"
    assert main(["ui", "--photo-root", str(missing), "--workspace", str(workspace)]) == 2
    assert f"--photo-root {missing}: no such folder" in capsys.readouterr().err
    assert not workspace.exists()  # nothing written before the flags are checked

    from dreambooth.ui.server import is_local

    assert [is_local(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost")] == [True] * 4
    assert [is_local(h) for h in ("0.0.0.0", "::", "", "192.168.1.5", "example.org")] == [False] * 5


def folders_to_probe(tmp_path):
    """A workspace, a --photo-root folder, and a folder of photos outside both, with links from inside to it."""
    workspace, root, secret = tmp_path / "ws", tmp_path / "shared", tmp_path / "secret"
    shutil.copytree(SAMPLE[0].parent, root / "dog")
    shutil.copytree(SAMPLE[0].parent, secret)
    shutil.copytree(SAMPLE[0].parent, workspace / "mine")
    (root / "link").symlink_to(secret, target_is_directory=True)
    (root / "dog" / "zz-link.jpg").symlink_to(secret / SAMPLE[0].name)
    return workspace, root, secret


def test_the_folder_field_reads_only_the_workspace_and_photo_roots(tmp_path):

    workspace, root, secret = folders_to_probe(tmp_path)
    jobs = Jobs(fake_train([]))

    def start(folder):
        return page_start(workspace, jobs, [], folder, photo_roots=[root], max_steps=1, rank=4, num_samples=0)

    outside = [str(secret), f"{root}/../secret", str(root / "link"), "../secret", "~", "/etc", "/no/such/folder"]
    for folder in outside:
        message = start(folder)
        assert message.startswith(f"Error: {folder}: outside the folders this page reads"), (folder, message)
        assert "--photo-root FOLDER" in message
    assert not (workspace / "uploads").exists() and jobs.snapshot() == []
    message = start(str(root / "dog"))  # a link inside a readable folder that leads out is left out, by name
    assert message.endswith("queued with 5 photos  \nWarning: zz-link.jpg leads outside the folders this page reads; skipped")
    assert "queued with 5 photos" in start("mine")  # a relative name is taken in the workspace
    assert start("nothing-here") == "Error: nothing-here: no such folder on this machine"
    assert "outside" in page_start(workspace, jobs, [], str(root / "dog"))  # without --photo-root only the workspace
    assert wait_for(lambda: all(j.state == "done" for j in jobs.snapshot()))


def request(url: str, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict, bytes]:
    """One HTTP request with the path sent as written (no `..` folded away on the way, as a hostile client sends it)."""
    host, port = url.split("//")[1].strip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def login_cookie(url: str, user: str, password: str) -> str:
    conn = http.client.HTTPConnection(*url.split("//")[1].strip("/").split(":"), timeout=60)
    conn.request("POST", "/login", body=f"username={user}&password={password}",
                 headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    response = conn.getresponse()
    cookies = [v.split(";")[0] for k, v in response.getheaders() if k.lower() == "set-cookie"]
    conn.close()
    return "; ".join(cookies) if response.status == 200 else ""


def call(url: str, cookie: str, api_name: str, data: list) -> tuple[str, object]:
    """An event through gradio's HTTP API, as any client can send one: ("complete", outputs) or ("error", message)."""
    headers = {"Cookie": cookie, "Content-Type": "application/json"}
    status, _, body = request(url, "POST", f"/gradio_api/call/{api_name}", json.dumps({"data": data}).encode(), headers)
    assert status == 200, body
    event_id = json.loads(body)["event_id"]
    _, _, stream = request(url, "GET", f"/gradio_api/call/{api_name}/{event_id}", headers={"Cookie": cookie})
    lines = stream.decode().splitlines()
    kind = next(line.split(": ", 1)[1] for line in lines if line.startswith("event: ") and "heartbeat" not in line)
    payload = json.loads(next(line.split(": ", 1)[1] for line in reversed(lines) if line.startswith("data: ")))
    return kind, payload


def upload(url: str, cookie: str, file: Path, name: str) -> tuple[int, object]:
    """A file sent as the page's upload button sends it, under the name `name` (which the browser controls)."""
    boundary = "probe-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + file.read_bytes() + f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
    headers = {"Cookie": cookie, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    status, _, answer = request(url, "POST", "/gradio_api/upload", body, headers)
    return status, json.loads(answer) if status == 200 else answer


@needs_gradio
@pytest.mark.slow
def test_a_shared_page_guards_its_files(tmp_path):
    """With --auth, nothing answers without the password; with it, neither the file route, nor an upload's name, nor
    a crafted upload path, nor the folder field reaches a file outside the workspace and --photo-root folders."""
    from dreambooth.ui import controls, train_tab

    workspace, root, secret = folders_to_probe(tmp_path)
    (workspace / "link").symlink_to(secret, target_is_directory=True)
    photo = SAMPLE[0].name
    with serve_ui(workspace, "--auth", "me:a-long-passphrase", "--photo-root", str(root)) as url:
        # no credentials, or wrong ones: no page data, no files, no uploads, no events
        for method, path in [("GET", "/config"), ("GET", f"/gradio_api/file={workspace}/mine/{photo}"),
                             ("POST", "/gradio_api/upload"), ("POST", "/gradio_api/call/start")]:  # fmt: skip
            assert request(url, method, path)[0] == 401, path
        assert login_cookie(url, "me", "wrong") == ""
        cookie = login_cookie(url, "me", "a-long-passphrase")
        assert cookie and request(url, "GET", "/config", headers={"Cookie": cookie})[0] == 200

        # the file route serves the workspace, and nothing that `..`, an absolute path or a link leads to
        status, _, body = request(url, "GET", f"/gradio_api/file={workspace}/mine/{photo}", headers={"Cookie": cookie})
        assert status == 200 and body == SAMPLE[0].read_bytes()
        for path in [f"{secret}/{photo}", f"{workspace}/../secret/{photo}", f"{workspace}/link/{photo}",
                     f"{workspace}/mine/../../secret/{photo}", "/etc/passwd"]:  # fmt: skip
            assert request(url, "GET", f"/gradio_api/file={path}", headers={"Cookie": cookie})[0] == 403, path

        # an upload lands in the workspace's upload cache under its base name, whatever folders its name carries
        status, stored = upload(url, cookie, SAMPLE[0], "../../../../evil.jpg")
        assert status == 200 and isinstance(stored, list), stored
        cache = (workspace / ".cache" / "gradio").resolve()
        assert Path(stored[0]).name == "evil.jpg" and Path(stored[0]).resolve().is_relative_to(cache)
        assert call(url, cookie, "check_uploads", [[{"path": stored[0], "meta": {"_type": "gradio.FileData"}}]]) == (
            "complete", ["1 usable photo  \n3–5 photos of the subject give a better likeness than 1"])  # fmt: skip
        # a path the client makes up is refused before any handler reads it
        for path in [f"{secret}/{photo}", f"{cache}/../../link/{photo}", f"{workspace}/mine/{photo}"]:
            kind, answer = call(url, cookie, "check_uploads", [[{"path": path, "meta": {"_type": "gradio.FileData"}}]])
            assert kind == "error" and "not uploaded by a user" in str(answer), (path, answer)

        # the folder field
        shown = train_tab.page_settings("tiny", "dog")
        values = [shown[name] for name in controls.SHOWN]
        for folder in [str(secret), f"{root}/../secret", str(root / "link"), "link", "../secret", "/etc"]:
            kind, answer = call(url, cookie, "start", [[], folder, "dog", "sks", *values])
            assert kind == "complete" and "outside the folders this page reads" in answer[0], (folder, answer)
        assert not (workspace / "uploads").exists()


@needs_gradio
@pytest.mark.slow
def test_no_auth_serves_an_open_host_on_purpose(tmp_path, capsys, monkeypatch):
    """--no-auth starts the page, with a warning; --photo-root folders reach the page's folder field."""
    from dreambooth.cli import main
    from dreambooth.ui import app

    launched, roots = [], []

    class Page:
        def queue(self, **_):
            pass

        def launch(self, **kwargs):
            launched.append(kwargs)

    monkeypatch.setattr(app, "build_app", lambda root, jobs, photo_roots=(): roots.extend(photo_roots) or Page())
    shared = tmp_path / "shared"
    shared.mkdir()
    flags = ["ui", "--host", "0.0.0.0", "--workspace", str(tmp_path / "ws"), "--photo-root", str(shared)]
    assert main([*flags, "--no-auth"]) == 0
    assert "--host 0.0.0.0 --no-auth: anyone who can reach this machine" in capsys.readouterr().err
    assert launched[0]["server_name"] == "0.0.0.0" and launched[0]["auth"] is None and roots == [shared.resolve()]
    assert main([*flags, "--auth", "me:pw"]) == 0 and launched[1]["auth"] == ("me", "pw")


# ---------------------------------------------------------------- the world's whole path, and a restart mid-run


# the README's screenshots: the demo's settings in full (DREAMBOOTH_UI_DEMO_SETTINGS=1, 1,000 steps), scored with 4
# samples per prompt; the test itself trains them at few steps with few class images and validation samples
WORLD_STEPS = int(os.environ.get("DREAMBOOTH_UI_WORLD_STEPS", "40"))
WORLD_SAMPLES = int(os.environ.get("DREAMBOOTH_UI_WORLD_SAMPLES", "2"))
DEMO_SETTINGS = os.environ.get("DREAMBOOTH_UI_DEMO_SETTINGS") == "1"


def state_of(page) -> tuple[str | None, int]:
    box = page.locator("#train-status .train-status")
    if not box.count():
        return None, 0
    value = page.get_attribute("#train-status progress", "value") if page.locator("#train-status progress").count() else 0
    return box.get_attribute("data-state"), int(value or 0)


def wait_for_state(page, states: tuple[str, ...], timeout: float, at_least: int = 0) -> tuple[str | None, int]:
    deadline = time.time() + timeout
    state, step = None, 0
    while time.time() < deadline:
        state, step = state_of(page)
        if state in states and step >= at_least:
            break
        time.sleep(0.25)
    return state, step


@contextlib.contextmanager
def world_page(browser, url: str):
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    try:
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(url)
        page.wait_for_selector("#photos")
        yield page
    finally:
        context.close()


def open_group(page, group: str) -> None:
    """Open the Advanced settings and one group of them."""
    if not page.is_visible("#cfg-adapter, #cfg-optimizer, #cfg-validation-loss"):
        page.locator("#advanced").get_by_text("Advanced", exact=True).first.click()
    page.locator("#advanced").get_by_text(group, exact=True).first.click()
    # While a group's opening animation runs, the page sets its fields back to their old values once (seen 70-80 ms
    # after the click): a test types within a few ms, so it waits for the animation to end.
    page.wait_for_function("document.getAnimations().every(a => a.playState !== 'running')")


def sample_and_start(page, steps: int, subject: str = "dog", demo: bool = False) -> None:
    """Sample subject (the demo's settings), few class images, steps and validation samples, Start: what a newcomer
    clicks on a CPU, kept short; with `demo` only the steps are changed, when they are not the demo's."""
    if subject != "dog":
        page.click("#subject input")
        page.get_by_role("option", name=subject).click()
    page.click("#sample")
    page.wait_for_selector("#photo-check:has-text('5 usable photos, 5 masks')")
    page.wait_for_function("document.querySelector('#class-noun textarea').value === 'dog'")
    if demo:
        if steps != 1000:
            page.fill("#cfg-max-steps input", str(steps))
        page.click("#start")
        page.wait_for_selector("#train-message:has-text('queued with 5 photos')")
        return
    for box, value in [("#cfg-max-steps", str(steps)), ("#cfg-num-class-images", "8")]:
        page.fill(f"{box} input", value)
    open_group(page, "Validation")
    for box, value in [("#cfg-validation-steps", str(max(steps // 2, 1))), ("#cfg-num-validation-images", "1")]:
        page.fill(f"{box} input", value)
    page.click("#start")
    page.wait_for_selector("#train-message:has-text('queued with 5 photos')")


def no_wider_than_the_screen(page) -> int:
    return page.evaluate("document.documentElement.scrollWidth")


@needs_browser
@pytest.mark.slow
def test_the_world_from_sample_subject_to_its_scores(browser, tmp_path):
    """Sample subject -> train a short world run with the demo's settings; the server stops mid-run (a TERM signal:
    the run saves a checkpoint first), the next server lists the job as stopped and Resume in the page finishes the
    same run from that checkpoint -> generate -> Evaluate shows the world's scores -> Gallery; and the same page at a
    phone's width. One run for both halves: the restart costs a server start, not a second training.
    DREAMBOOTH_UI_SCREENSHOTS=docs writes the README's screenshots from it."""
    from dreambooth.ui import evaluate_tab

    workspace = tmp_path / "workspace"
    workspace.mkdir()
    with serve_ui(workspace) as url:
        with world_page(browser, url) as page:
            sample_and_start(page, WORLD_STEPS, demo=DEMO_SETTINGS)
            state, reached = wait_for_state(page, ("running",), timeout=240 + WORLD_STEPS // 2, at_least=WORLD_STEPS // 3)
            assert state == "running", page.inner_text("#train-status")
    # serve_ui's exit sent the TERM signal and waited for the server to end
    saved = json.loads((workspace / "jobs.json").read_text())["jobs"]
    assert [j["state"] for j in saved] == ["stopped"] and reached <= saved[0]["step"] < WORLD_STEPS
    run_dir = Path(saved[0]["cfg"]["output_dir"])
    assert (run_dir / "checkpoints" / f"step-{saved[0]['step']:06d}").is_dir()

    with serve_ui(workspace) as url:
        with world_page(browser, url) as page:
            state, step = wait_for_state(page, ("stopped",), timeout=30)
            assert state == "stopped" and step == saved[0]["step"], page.inner_text("#train-status")
            page.get_by_role("tab", name="Gallery").click()
            page.wait_for_selector(f"#gallery-cards .card.unfinished:has-text('stopped at step {step}/{WORLD_STEPS}')")
            page.get_by_role("tab", name="Train").click()
            page.click("#resume")
            page.wait_for_selector("#train-message:has-text('resumes from its newest checkpoint')")
            # the page shows "stopped" until its next poll: wait for the end alone
            state, step = wait_for_state(page, ("done", "failed"), timeout=300 + WORLD_STEPS * (2 if DEMO_SETTINGS else 1))
            assert state == "done" and step == WORLD_STEPS, page.inner_text("#train-status")
            assert f"# resumed from checkpoints/step-{saved[0]['step']:06d}" in (run_dir / "config.yaml").read_text()
            run = runs.find_runs(workspace)[0]
            assert runs.find_runs(workspace) == [run_dir.relative_to(workspace).as_posix()]
            # the loss curve, from the run's progress file
            assert int(page.get_attribute("#train-status svg.loss", "data-points")) >= WORLD_STEPS // 10
            cfg = runs.run_config(workspace / run)  # trained with the demo's settings
            assert cfg["model"] == "world" and cfg["masked_loss"] and cfg["mask_background_weight"] == 0.1
            assert (cfg["class_caption_dropout"], cfg["preserve_unconditional"], cfg["prior_loss_weight"]) == (0.2, True, 2.0)
            assert "a photo of a dog on the beach" in Path(cfg["class_prompts_file"]).read_text()
            assert cfg["validation_loss"] and "a photo of sks dog on the beach" in Path(cfg["validation_prompts"]).read_text()
            assert len(list(Path(cfg["instance_dir"]).glob("photo-*.mask.png"))) == 5
            # the validation curves, and the grid of the validation prompts (a 32 px sample a row here) enlarged
            for curve in ("loss", "scores"):
                page.wait_for_selector(f"#train-curves img[src*='validation/{curve}.png']")
            page.wait_for_selector("#validations img")
            page.wait_for_function(
                "[...document.querySelectorAll('#train-curves img, #validations img')].every(i => i.complete && "
                "i.naturalWidth > 0) && document.querySelector('#validations img').naturalWidth >= 512"
            )
            shoot(page, tmp_path, "train")

            page.get_by_role("tab", name="Generate").click()
            page.wait_for_function("document.querySelector('#gen-prompt textarea').value === 'a photo of sks dog'")
            page.fill("#gen-prompt textarea", "a photo of sks dog on the beach")
            page.fill("#gen-num input", "8")
            page.fill("#gen-steps input", "25")
            page.click("#generate")
            page.wait_for_selector("#gen-message:has-text('8 images')", timeout=120_000)
            assert page.locator("#gallery img").count() >= 8
            shoot(page, tmp_path, "generate")

            page.get_by_role("tab", name="Evaluate").click()
            page.wait_for_selector("#scores:has-text('Not scored yet')")
            page.get_by_text("32 (the demo's)").click()
            page.wait_for_selector("#eval-estimate:has-text('Scoring draws 512 samples (32 of each of 8 prompts')")
            choice = next(label for label, n in evaluate_tab.SAMPLE_CHOICES if n == WORLD_SAMPLES)
            page.locator("#world-samples").get_by_text(choice, exact=True).click()
            page.wait_for_selector(f"#eval-estimate:has-text('({WORLD_SAMPLES} of each of 8 prompts')")
            page.click("#score")
            page.wait_for_selector(".progress-text, .eta-bar, .progress-level", timeout=60_000)  # gradio's progress bar
            page.wait_for_selector(
                f"#eval-message:has-text('scored {WORLD_SAMPLES} samples of each of 8 prompts')", timeout=600_000
            )
            table = page.inner_text("#scores")
            for name in ("subject fidelity", "subject in context", "class drift", "class diversity", "after DreamBooth"):
                assert name in table, table
            saved = json.loads((workspace / "scores" / run.replace("/", "-") / "world" / "scores.json").read_text())
            assert saved["samples_per_prompt"] == WORLD_SAMPLES and set(saved["before"]) == set(saved["after"])
            page.wait_for_function(
                "[...document.querySelectorAll('#scores .world-grids img')].length === 16 && "  # 8 prompts, before and after
                "[...document.querySelectorAll('#scores .world-grids img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            shoot(page, tmp_path, "evaluate")

            page.get_by_role("tab", name="Gallery").click()
            card = page.locator(f"#gallery-cards .card[data-run='{run}']")
            card.wait_for()
            assert "subject fidelity" in card.inner_text() and card.locator("img.photo").count() == 5
            assert {a.get_attribute("download") for a in card.locator("a.download").all()} == {
                "pytorch_lora_weights.safetensors",
                "lora_kohya.safetensors",
            }
            page.wait_for_function(
                "[...document.querySelectorAll('#gallery-cards img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            with page.expect_download() as info:
                card.locator("a.download[download='lora_kohya.safetensors']").click()
            info.value.save_as(tmp_path / "lora_kohya.safetensors")
            assert (tmp_path / "lora_kohya.safetensors").read_bytes() == (workspace / run / "lora_kohya.safetensors").read_bytes()
            shoot(page, tmp_path, "gallery")

            page.set_viewport_size({"width": 390, "height": 844})
            for tab in ("Train", "Generate", "Evaluate", "Gallery"):
                page.get_by_role("tab", name=tab).click()
                page.wait_for_timeout(300)
                assert no_wider_than_the_screen(page) <= 390, tab
            page.get_by_role("tab", name="Evaluate").click()
            shoot(page, tmp_path, "phone")
