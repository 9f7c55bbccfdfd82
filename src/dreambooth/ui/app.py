"""The page's layout: three tabs wired to the actions in train_tab, generate_tab and evaluate_tab."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from ..config import EvaluateConfig, GenerateConfig
from ..models import EMBEDDED, embedded_help
from ..world.render import CLASSES
from . import controls, evaluate_tab, gallery_tab, generate_tab, runs, train_tab
from .jobs import Jobs
from .uploads import MAX_PHOTOS

CSS = """
.train-status progress { width: 100%; height: 1.2em; }
.train-status .line { font-family: ui-monospace, monospace; margin-top: .3em; }
.train-status .note { color: #b45309; }
table.scores td, table.scores th { padding: 3px 10px; text-align: right; }
table.scores td:first-child, table.scores th:first-child { text-align: left; }
table.scores tr.ref { color: #666; }
iframe.bench { width: 100%; height: 600px; border: 1px solid #ddd; }
svg.loss { width: 100%; max-width: 480px; height: 120px; display: block; margin-top: .4em; }
.train-status .axis { font-size: .8em; color: #666; }
.train-status .outside { margin-top: .6em; }
.world-grids figure { margin: .4em 0; }
.world-grids img, .gallery img { image-rendering: pixelated; max-width: 100%; }
#validations img, #gallery img { image-rendering: pixelated; }
#train-curves .curves { display: flex; flex-wrap: wrap; gap: 8px; }
#train-curves figure { margin: 0; flex: 1 1 280px; max-width: 480px; }
#train-curves img { width: 100%; display: block; }
#train-curves figcaption { font-size: .85em; color: #666; }
.world-grids .pair { display: flex; flex-wrap: wrap; gap: 2px 12px; }
.world-grids .pair > div { flex: 1 1 160px; max-width: 384px; }
.world-grids img { width: 100%; display: block; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 12px; }
.gallery .card { border: 1px solid #ddd; border-radius: 8px; padding: 8px 10px; min-width: 0; }
.gallery .card h3 { margin: 0 0 .2em; font-size: 1em; overflow-wrap: anywhere; }
.gallery .row { display: flex; flex-wrap: wrap; gap: 4px; margin: 4px 0; }
.gallery img.photo { width: 56px; height: 56px; object-fit: cover; }
.gallery img.sample { height: 96px; max-width: 100%; object-fit: contain; }
.gallery .score { display: inline-block; margin-right: .8em; }
.gallery a.download { display: inline-block; margin-right: .8em; overflow-wrap: anywhere; }
/* a phone (390 px): one column, nothing wider than the screen */
@media (max-width: 600px) {
  .gradio-container { padding: 4px !important; }
  table.scores td, table.scores th { padding: 2px 4px; font-size: .85em; }
  table.scores { width: 100%; table-layout: fixed; }
  table.scores td:first-child, table.scores th:first-child { overflow-wrap: anywhere; }
  .gallery { grid-template-columns: 1fr; }
  iframe.bench { height: 420px; }
}
"""

# the embedded models (but the v-prediction test model), then the common hub bases
MODELS = [name for name in EMBEDDED if name != "tiny-v"] + [
    "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "stabilityai/stable-diffusion-2-1-base",
    "stabilityai/stable-diffusion-xl-base-1.0",
]


def theme():
    # System fonts: the default theme fetches Google Fonts, and the page makes no outside calls.
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def run_list(workspace: Path, current: str | None = None):
    choices = runs.find_runs(workspace)
    return gr.Dropdown(choices=choices, value=current if current in choices else (choices[0] if choices else None))


def control(name: str, value, gpu: bool):
    """The widget of one TrainConfig field (controls.py says which and how), elem_id cfg-<flag name>."""
    f = controls.field(name)
    kind = controls.kind(name)
    common = {"label": controls.label(name), "value": value, "elem_id": "cfg-" + name.replace("_", "-"), "min_width": 200}
    if name not in controls.BASIC or name in ("export",):
        common["info"] = f.metadata["help"]
    if name == "model":
        return gr.Dropdown(
            MODELS,
            allow_custom_value=True,
            **{**common, "label": f"Base model: {embedded_help()}, a hub id, a local diffusers folder or .safetensors file"},
        )
    if name == "base_quantization" and not gpu:  # CUDA only: shown, so the choice is known, but not offered
        return gr.Dropdown(
            controls.choices(name), interactive=False, **{**common, "info": "needs a CUDA GPU; " + f.metadata["help"]}
        )
    if kind == "choice":
        return gr.Dropdown(controls.choices(name), **common)
    if kind == "check":
        return gr.Checkbox(**common)
    if kind == "int":
        return gr.Number(precision=0, **common)
    if kind == "float":
        return gr.Number(**common)
    if kind == "lines":
        return gr.Textbox(lines=4, max_lines=12, **common)
    return gr.Textbox(**common)  # text, and words: names apart by spaces


def train_layout(values: dict, photo_roots: Sequence[Path] = (), gpu: bool = False) -> SimpleNamespace:
    """The Train tab's components; `values` are the controls' first values (train_tab.page_settings)."""
    shown: dict = {}
    with gr.Tab("Train", id="train"):
        with gr.Row():
            with gr.Column():
                photos = gr.File(
                    label=f"Photos of the subject (3–{MAX_PHOTOS}), and any masks (name.mask.png, white = subject)",
                    file_count="multiple",
                    file_types=["image"],
                    elem_id="photos",
                )
                photo_check = gr.Markdown(elem_id="photo-check")
                with gr.Row():
                    subject = gr.Dropdown(list(CLASSES), value="dog", label="The world's subjects", elem_id="subject", scale=2)
                    sample = gr.Button("Sample subject", size="sm", elem_id="sample", scale=1)
                where = "the workspace" + "".join(f" or {root}" for root in photo_roots)
                folder = gr.Textbox(
                    label=f"…or a folder of photos in {where}",
                    placeholder=f"e.g. {photo_roots[0] / 'my-dog' if photo_roots else 'photos/my-dog'}",
                    elem_id="folder",
                )
                class_noun = gr.Textbox(label="Class noun", value="dog", elem_id="class-noun")
                with gr.Row():
                    identifier = gr.Textbox(label="Identifier (a rare token)", value=train_tab.suggest(0), elem_id="identifier")
                    another = gr.Button("Suggest another", size="sm", elem_id="suggest")
                seed_state = gr.State(0)
                tokens = gr.Markdown(train_tab.tokens_markdown(train_tab.suggest(0), "dog"), elem_id="tokens")
                prior = gr.Markdown(elem_id="identifier-prior")
                shown["model"] = control("model", values["model"], gpu)
            with gr.Column():
                for row in controls.BASIC_ROWS:
                    with gr.Row():
                        for name in row:
                            shown[name] = control(name, values[name], gpu)
                with gr.Accordion("Advanced", open=False, elem_id="advanced"):
                    for group, names in controls.ADVANCED.items():
                        with gr.Accordion(group, open=False, elem_classes="group"):
                            for name in names:  # a box of lines takes the whole width
                                if controls.kind(name) == "lines":
                                    shown[name] = control(name, values[name], gpu)
                            with gr.Row():
                                for name in names:
                                    if controls.kind(name) != "lines":
                                        shown[name] = control(name, values[name], gpu)
                with gr.Row():
                    start = gr.Button("Start", variant="primary", elem_id="start")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                    resume = gr.Button("Resume", elem_id="resume")
                message = gr.Markdown(elem_id="train-message")
                status = gr.HTML(elem_id="train-status")
                validations = gr.Gallery(
                    label="Validation images (small ones enlarged, pixels kept sharp)",
                    columns=2,
                    height=360,
                    object_fit="contain",
                    elem_id="validations",
                )
                curves = gr.HTML(elem_id="train-curves")
                queue = gr.Markdown(elem_id="queue")
        seen = gr.State([])
        finished = gr.State(-1)
    return SimpleNamespace(
        photos=photos,
        photo_check=photo_check,
        subject=subject,
        sample=sample,
        folder=folder,
        class_noun=class_noun,
        identifier=identifier,
        another=another,
        seed_state=seed_state,
        tokens=tokens,
        prior=prior,
        controls=shown,
        start=start,
        stop=stop,
        resume=resume,
        message=message,
        status=status,
        validations=validations,
        curves=curves,
        queue=queue,
        shown=seen,
        finished=finished,
    )


def generate_layout(g: GenerateConfig) -> SimpleNamespace:
    """The Generate tab's components."""
    with gr.Tab("Generate", id="generate") as tab:
        with gr.Row():
            with gr.Column():
                run = gr.Dropdown(label="Run (any LoRA folder in the workspace)", choices=[], elem_id="gen-run")
                refresh = gr.Button("Refresh runs", size="sm")
                run_md = gr.Markdown()
                prompt = gr.Textbox(label="Prompt", elem_id="gen-prompt")
                negative = gr.Textbox(label="Negative prompt")
                with gr.Row():
                    num_images = gr.Number(
                        label="Images", value=g.num_images, precision=0, minimum=1, maximum=16, elem_id="gen-num"
                    )
                    gen_steps = gr.Number(label="Steps", value=g.steps, precision=0, minimum=1, elem_id="gen-steps")
                    seed = gr.Number(label="Seed", value=g.seed, precision=0)
                guidance = gr.Slider(0, 20, value=g.guidance, step=0.5, label="Guidance")
                unet_scale = gr.Slider(0, 2, value=g.unet_scale, step=0.05, label="UNet LoRA scale")
                te_scale = gr.Slider(0, 2, value=g.text_encoder_scale, step=0.05, label="Text-encoder LoRA scale")
                go = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                gen_message = gr.Markdown(elem_id="gen-message")
                gallery = gr.Gallery(label="Images", columns=2, elem_id="gallery")
                lora_files = gr.File(
                    label="LoRA files: pytorch_lora_weights for diffusers, lora_kohya for ComfyUI / A1111 / Forge",
                    file_count="multiple",
                    interactive=False,
                    elem_id="lora-files",
                )
                image_files = gr.File(label="Images to download", file_count="multiple", interactive=False, elem_id="downloads")
    return SimpleNamespace(
        run=run,
        refresh=refresh,
        run_md=run_md,
        prompt=prompt,
        negative=negative,
        num_images=num_images,
        gen_steps=gen_steps,
        seed=seed,
        guidance=guidance,
        unet_scale=unet_scale,
        te_scale=te_scale,
        go=go,
        gen_message=gen_message,
        gallery=gallery,
        lora_files=lora_files,
        image_files=image_files,
        tab=tab,
    )


def evaluate_layout(e: EvaluateConfig) -> SimpleNamespace:
    """The Evaluate tab's components."""
    with gr.Tab("Evaluate", id="evaluate") as tab:
        with gr.Row():
            with gr.Column():
                eval_run = gr.Dropdown(label="Run", choices=[], elem_id="eval-run")
                dino = gr.Textbox(label="DINO model (hub id or local folder)", value=e.dino_model)
                clip = gr.Textbox(label="CLIP model (hub id or local folder)", value=e.clip_model)
                world_n = gr.Radio(
                    evaluate_tab.SAMPLE_CHOICES,
                    label="World runs: samples per prompt (the demo draws 32; the page's 4 are quicker, the shares coarser)",
                    value=evaluate_tab.WORLD_SAMPLES,
                    elem_id="world-samples",
                )
                estimate = gr.Markdown(elem_id="eval-estimate")
                score = gr.Button("Score", variant="primary", elem_id="score")
                gr.Markdown(
                    "A run on the **world** base is scored as `dreambooth demo` scores it: the base model and the run "
                    "draw the subject alone, in six new contexts and its class, and the world's reader reads each sample "
                    "(subject fidelity, subject in context, drift, diversity).  \n"
                    "Other runs: the paper's DINO and CLIP-I (the Generate tab's images vs the run's photos) and CLIP-T "
                    "(images vs their prompts, identifier removed), higher is better. They need the DINO and CLIP "
                    "weights: from the hub, or a local folder named here."
                )
            with gr.Column():
                eval_message = gr.Markdown(elem_id="eval-message")
                table = gr.HTML(evaluate_tab.scores_table("", None), elem_id="scores")
        bench_html = gr.HTML(elem_id="bench-report")
        bench_files = gr.File(label="Benchmark reports", file_count="multiple", interactive=False, visible=False)

    return SimpleNamespace(
        eval_run=eval_run,
        world_n=world_n,
        estimate=estimate,
        dino=dino,
        clip=clip,
        score=score,
        eval_message=eval_message,
        table=table,
        bench_html=bench_html,
        bench_files=bench_files,
        tab=tab,
    )


def gallery_layout() -> SimpleNamespace:
    """The Gallery tab: one card per run."""
    with gr.Tab("Gallery", id="gallery") as tab:
        refresh = gr.Button("Refresh", size="sm", elem_id="gallery-refresh")
        cards = gr.HTML(elem_id="gallery-cards")
    return SimpleNamespace(tab=tab, refresh=refresh, cards=cards)


def build_app(workspace: Path, jobs: Jobs | None = None, photo_roots: Sequence[Path] = ()) -> gr.Blocks:
    """The page over `workspace`; its folder field reads photos only there and in `photo_roots`. Without `jobs`, the
    page's jobs are kept in WORKSPACE/jobs.json (they outlive the server)."""
    jobs = jobs or Jobs(state_file=workspace / "jobs.json")
    # the controls start at the proposed base's settings: on a CPU the world's, those `dreambooth demo` trains the dog with
    model, g = train_tab.proposed_model(), GenerateConfig()
    with gr.Blocks(title="DreamBooth", analytics_enabled=False) as app:
        gr.Markdown(
            "## DreamBooth + LoRA\nTeach a Stable Diffusion model one subject from a few photos, then draw it anywhere. "
            f"Workspace: `{workspace.name}`"
        )
        with gr.Tabs(overflow_behavior="wrap"):  # on a phone every tab stays in sight, not in a menu
            tr = train_layout(train_tab.page_settings(model, "dog"), photo_roots, gpu=train_tab.has_gpu())
            ge = generate_layout(g)
            ev = evaluate_layout(EvaluateConfig())
            ga = gallery_layout()
        # ---- wiring: each action is a plain function with the workspace and the job queue bound
        tr.photos.change(train_tab.check_uploads, tr.photos, tr.photo_check)
        fields = [tr.controls[name] for name in controls.SHOWN]
        rest = [tr.controls[name] for name in controls.SHOWN if name != "model"]
        tr.sample.click(
            partial(train_tab.sample_subject, workspace),
            tr.subject,
            [tr.photos, tr.class_noun, tr.identifier, tr.controls["model"], tr.message, *rest],
        ).then(lambda: "", None, tr.prior, show_progress="hidden")
        tr.another.click(
            lambda s, model, noun, mine: (s + 1, *train_tab.suggest_measured(s + 1, model, noun, mine)),
            [tr.seed_state, tr.controls["model"], tr.class_noun, tr.identifier],
            [tr.seed_state, tr.identifier, tr.prior],
        )
        for box in (tr.identifier, tr.class_noun, tr.controls["model"]):  # what a person types makes it stale;
            box.input(lambda: "", None, tr.prior, show_progress="hidden")  # `change` would also fire on the suggestion
        for box in (tr.identifier, tr.class_noun):
            box.change(train_tab.tokens_markdown, [tr.identifier, tr.class_noun], tr.tokens, show_progress="hidden")
        tr.start.click(
            partial(train_tab.start, workspace, jobs, photo_roots=list(photo_roots)),
            [tr.photos, tr.folder, tr.class_noun, tr.identifier, *fields],
            tr.message,
            api_name="start",
        )
        # a base model chosen by hand brings its settings (on the world, the demo's for the class noun)
        tr.controls["model"].input(train_tab.defaults_for, [tr.controls["model"], tr.class_noun], rest)
        tr.class_noun.input(
            train_tab.class_settings,
            [tr.controls["model"], tr.class_noun],
            [tr.controls[name] for name in ("class_prompt", "class_prompts_file", "validation_prompts")],
        )
        tr.controls["optimizer"].input(
            train_tab.implied_rates,
            [tr.controls[name] for name in ("optimizer", "model", "learning_rate", "text_encoder_lr")],
            [tr.controls["learning_rate"], tr.controls["text_encoder_lr"]],
        )
        tr.stop.click(partial(train_tab.stop, jobs), None, tr.message)
        tr.resume.click(partial(train_tab.resume, jobs), None, tr.message)
        timer = gr.Timer(1.0)
        timer.tick(
            partial(train_tab.progress, jobs, workspace=workspace),
            tr.shown,
            [tr.status, tr.validations, tr.queue, tr.shown, tr.curves],
            show_progress="hidden",
            concurrency_limit=None,
        )

        def refresh_runs(gen_value, eval_value):
            return run_list(workspace, gen_value), run_list(workspace, eval_value)

        def on_finish(count, gen_value, eval_value):
            # The run lists refresh when a job ends, so a run trained a moment ago can be chosen at once.
            now = train_tab.finished_runs(jobs)
            if now == count:
                return count, gr.skip(), gr.skip()
            return (now, *refresh_runs(gen_value, eval_value))

        timer.tick(
            on_finish,
            [tr.finished, ge.run, ev.eval_run],
            [tr.finished, ge.run, ev.eval_run],
            show_progress="hidden",
            concurrency_limit=None,
        )
        for event in (ge.refresh.click, ge.tab.select, ev.tab.select, app.load):
            event(refresh_runs, [ge.run, ev.eval_run], [ge.run, ev.eval_run], show_progress="hidden")
        ge.run.change(partial(generate_tab.run_info, workspace), ge.run, [ge.run_md, ge.prompt, ge.lora_files])
        ge.go.click(
            partial(generate_tab.make_images, workspace),
            [ge.run, ge.prompt, ge.negative, ge.num_images, ge.gen_steps, ge.guidance, ge.unet_scale, ge.te_scale, ge.seed],
            [ge.gallery, ge.image_files, ge.gen_message],
        )
        ev.eval_run.change(partial(evaluate_tab.show, workspace), ev.eval_run, ev.table)
        for event in (ev.eval_run.change, ev.world_n.change):
            event(partial(evaluate_tab.estimate, workspace), [ev.eval_run, ev.world_n], ev.estimate, show_progress="hidden")

        def score(run, dino, clip, samples, progress=gr.Progress()):  # noqa: B008 - gradio's way to show a progress bar
            if evaluate_tab.is_world_run(workspace, run):
                return evaluate_tab.score_world(workspace, run, samples, progress)
            return evaluate_tab.score(workspace, run, dino, clip)

        ev.score.click(score, [ev.eval_run, ev.dino, ev.clip, ev.world_n], [ev.eval_message, ev.table]).then(
            partial(evaluate_tab.estimate, workspace), [ev.eval_run, ev.world_n], ev.estimate, show_progress="hidden"
        )
        for event in (ga.tab.select, ga.refresh.click, app.load):
            event(partial(gallery_tab.cards_html, workspace, jobs), None, ga.cards, show_progress="hidden")

        def show_bench():
            frame, files = evaluate_tab.bench_report(workspace)
            return frame, gr.File(value=files, visible=bool(files))

        for event in (ev.tab.select, app.load):
            event(show_bench, None, [ev.bench_html, ev.bench_files], show_progress="hidden")
    return app
