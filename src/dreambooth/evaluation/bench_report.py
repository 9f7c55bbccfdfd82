"""The bench's reports: one row per subject, the mean row and the paper's reference rows, as Markdown, CSV,
JSON and an HTML page that shows each subject's real photos beside its generated images."""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path
from typing import Any

from PIL import ImageOps

from .. import atomic
from ..config import METRIC_NAMES
from ..sampling import grid
from .embeddings import open_rgb
from .metrics import mean

SOURCE = "Ruiz et al. 2022"
# The DreamBooth paper: Table 1 (subject fidelity, prompt fidelity) and Table 3 (prior-preservation ablation, Imagen).
REFERENCE: list[dict[str, Any]] = [
    {"name": "Real images", "dino": 0.774, "clip_i": 0.885, "clip_t": None, "pres": None, "div": None},
    {"name": "DreamBooth (Imagen)", "dino": 0.696, "clip_i": 0.812, "clip_t": 0.306, "pres": None, "div": None},
    {"name": "DreamBooth (Stable Diffusion)", "dino": 0.668, "clip_i": 0.803, "clip_t": 0.305, "pres": None, "div": None},
    {"name": "Textual Inversion (Stable Diffusion)", "dino": 0.569, "clip_i": 0.780, "clip_t": 0.255, "pres": None, "div": None},
    {
        "name": "DreamBooth (Imagen) with prior preservation",
        "dino": None,
        "clip_i": None,
        "clip_t": None,
        "pres": 0.493,
        "div": 0.391,
    },
    {
        "name": "DreamBooth (Imagen) without prior preservation",
        "dino": None,
        "clip_i": None,
        "clip_t": None,
        "pres": 0.664,
        "div": 0.371,
    },
]
THUMB = 128


def row(result: dict) -> dict:
    """A subject's summary row from its scores.json."""
    return {
        "subject": result["subject"],
        "class": result["class_noun"],
        "kind": result["kind"],
        **{key: result["means"].get(key) for key in METRIC_NAMES},
    }


def mean_row(rows: list[dict]) -> dict:
    return {
        "subject": "mean",
        "class": "",
        "kind": f"{len(rows)} subjects",
        **{k: mean(r[k] for r in rows) for k in METRIC_NAMES},
    }


def fmt(value) -> str:
    return f"{value:.3f}" if value is not None else "–"


def markdown_table(rows: list[dict]) -> str:
    head = "| | class | kind | " + " | ".join(name for _, name in METRIC_NAMES.items()) + " |"
    lines = [head, "|---|---|---|" + "---:|" * len(METRIC_NAMES)]
    for r in [*rows, mean_row(rows)]:
        name = f"**{r['subject']}**" if r["subject"] == "mean" else r["subject"]
        lines.append(f"| {name} | {r['class']} | {r['kind']} | " + " | ".join(fmt(r[k]) for k in METRIC_NAMES) + " |")
    for ref in REFERENCE:
        lines.append(f"| *{ref['name']}* | | {SOURCE} | " + " | ".join(fmt(ref[k]) for k in METRIC_NAMES) + " |")
    return "\n".join(lines)


def markdown(rows: list[dict], settings: dict) -> str:
    return "\n".join(
        [
            "# DreamBench results",
            "",
            f"Base model `{settings['model']}`, {settings['max_steps']} training steps, prior preservation "
            f"{'on' if settings['with_prior_preservation'] else 'off'}, identifier `{settings['identifier']}`; "
            f"{settings['images_per_prompt']} images for each of {settings['num_prompts']} prompts per subject, "
            f"{settings['steps']} sampling steps, guidance {settings['guidance']}, seed {settings['seed']}.",
            "",
            "DINO, CLIP-I: mean cosine similarity of generated and real images (higher = closer to the subject). "
            "CLIP-T: generated image vs its prompt without the identifier. PRES: DINO of class-prompt images vs the "
            "subject (lower = class prior kept). DIV: mean LPIPS between images of the same prompt (higher = more diverse). "
            f"Reference rows in italics are the paper's ({SOURCE}).",
            "",
            markdown_table(rows),
            "",
        ]
    )


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["row", "class", "kind", *[k for k in METRIC_NAMES]])
    for r in [*rows, mean_row(rows)]:
        writer.writerow([r["subject"], r["class"], r["kind"], *["" if r[k] is None else f"{r[k]:.4f}" for k in METRIC_NAMES]])
    for ref in REFERENCE:
        writer.writerow([ref["name"], "", f"reference ({SOURCE})", *["" if ref[k] is None else ref[k] for k in METRIC_NAMES]])
    return buf.getvalue()


def html_page(rows: list[dict], settings: dict) -> str:
    e = html.escape

    def cells(values, tag="td"):
        return "".join(f"<{tag}>{e(str(v))}</{tag}>" for v in values)

    table = [f"<tr>{cells(['', 'class', 'kind', *[n for _, n in METRIC_NAMES.items()]], 'th')}</tr>"]
    for r in [*rows, mean_row(rows)]:
        table.append(f"<tr>{cells([r['subject'], r['class'], r['kind'], *[fmt(r[k]) for k in METRIC_NAMES]])}</tr>")
    for ref in REFERENCE:
        table.append(f"<tr class='ref'>{cells([ref['name'], '', SOURCE, *[fmt(ref[k]) for k in METRIC_NAMES]])}</tr>")
    sections = []
    for r in rows:
        scores = " · ".join(f"{name} {fmt(r[k])}" for k, name in METRIC_NAMES.items())
        sections.append(
            f"<section><h2>{e(r['subject'])} <small>({e(r['class'])}, {e(r['kind'])})</small></h2><p>{e(scores)}</p>"
            f"<div class='pair'><figure><img src='{e(r['subject'])}/real.png' alt='real photos'><figcaption>real photos</figcaption></figure>"
            f"<figure><img src='{e(r['subject'])}/generated.png' alt='generated images'>"
            f"<figcaption>generated, first image of each prompt</figcaption></figure></div></section>"
        )
    return "\n".join(
        [
            "<!doctype html>",
            "<html><head><meta charset='utf-8'><title>DreamBench results</title>",
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{padding:4px 10px;"
            "border-bottom:1px solid #ddd;text-align:right}td:first-child,th:first-child{text-align:left}tr.ref{color:#666;"
            "font-style:italic}.pair{display:flex;gap:2em;align-items:flex-start}figure{margin:0}img{max-width:100%}</style>",
            "</head><body>",
            "<h1>DreamBench results</h1>",
            f"<p>Base model <code>{e(str(settings['model']))}</code>, {settings['max_steps']} training steps, "
            f"{settings['images_per_prompt']} images × {settings['num_prompts']} prompts per subject. "
            f"Reference rows: {SOURCE}.</p>",
            f"<table>{''.join(table)}</table>",
            *sections,
            "</body></html>",
            "",
        ]
    )


def write(out: Path, rows: list[dict], settings: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = {"settings": settings, "subjects": rows, "mean": mean_row(rows), "reference": {"source": SOURCE, "rows": REFERENCE}}
    atomic.write_text(out / "bench.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    atomic.write_text(out / "bench.csv", csv_text(rows))
    atomic.write_text(out / "bench.md", markdown(rows, settings))
    atomic.write_text(out / "bench.html", html_page(rows, settings))


def subject_images(sdir: Path, real: list[Path], generated: list[Path]) -> None:
    """real.png (the photos in a row) and generated.png (one image per prompt, 5 a row) for the HTML page."""

    def thumbs(paths):
        return [ImageOps.fit(open_rgb(p), (THUMB, THUMB)) for p in paths]

    atomic.save_image(grid(thumbs(real), cols=min(len(real), 5)), sdir / "real.png")
    atomic.save_image(grid(thumbs(generated), cols=min(len(generated), 5)), sdir / "generated.png")


# ---------------------------------------------------------------- several methods: a column block per method


def method_rows(by_method: dict[str, list[dict]]) -> list[dict]:
    """One row per subject (and the mean), each method's scores under `<method>:<metric>`; a subject a method did
    not run is empty there."""
    subjects: dict[str, dict] = {}
    for rows in by_method.values():
        for r in rows:
            subjects.setdefault(r["subject"], {"subject": r["subject"], "class": r["class"], "kind": r["kind"]})
    out = [dict(s) for s in subjects.values()]
    for method, rows in by_method.items():
        found = {r["subject"]: r for r in rows}
        for row in out:
            row.update({f"{method}:{k}": found.get(row["subject"], {}).get(k) for k in METRIC_NAMES})
    means = {"subject": "mean", "class": "", "kind": f"{len(out)} subjects"}
    for method, rows in by_method.items():
        means.update({f"{method}:{k}": v for k, v in mean_row(rows).items() if k in METRIC_NAMES})
    return [*out, means]


def methods_markdown_table(by_method: dict[str, list[dict]]) -> str:
    heads = [f"{m} {name}" for m in by_method for name in METRIC_NAMES.values()]
    lines = ["| | class | kind | " + " | ".join(heads) + " |", "|---|---|---|" + "---:|" * len(heads)]
    for r in method_rows(by_method):
        name = f"**{r['subject']}**" if r["subject"] == "mean" else r["subject"]
        values = [fmt(r[f"{m}:{k}"]) for m in by_method for k in METRIC_NAMES]
        lines.append(f"| {name} | {r['class']} | {r['kind']} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def reference_table() -> str:
    lines = ["| | " + " | ".join(METRIC_NAMES.values()) + " |", "|---|" + "---:|" * len(METRIC_NAMES)]
    lines += [f"| *{ref['name']}* | " + " | ".join(fmt(ref[k]) for k in METRIC_NAMES) + " |" for ref in REFERENCE]
    return "\n".join(lines)


def methods_markdown(by_method: dict[str, list[dict]], settings: dict[str, dict]) -> str:
    first = next(iter(settings.values()))
    return "\n".join(
        [
            "# DreamBench results by method",
            "",
            f"Base model `{first['model']}`, {first['max_steps']} training steps, prior preservation "
            f"{'on' if first['with_prior_preservation'] else 'off'}; {first['images_per_prompt']} images for each of "
            f"{first['num_prompts']} prompts per subject, {first['steps']} sampling steps, guidance {first['guidance']}, "
            f"seed {first['seed']}. Methods: " + ", ".join(f"`{m}` ({m}/bench.md)" for m in by_method) + ". "
            "DreamBooth's prompts say the identifier; textual inversion's and pivotal tuning's say the new tokens, "
            "which CLIP-T deletes as it deletes an identifier.",
            "",
            methods_markdown_table(by_method),
            "",
            f"The paper's rows ({SOURCE}):",
            "",
            reference_table(),
            "",
        ]
    )


def methods_csv_text(by_method: dict[str, list[dict]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    keys = [f"{m}:{k}" for m in by_method for k in METRIC_NAMES]
    writer.writerow(["row", "class", "kind", *keys])
    for r in method_rows(by_method):
        writer.writerow([r["subject"], r["class"], r["kind"], *["" if r[k] is None else f"{r[k]:.4f}" for k in keys]])
    return buf.getvalue()


def methods_html_page(by_method: dict[str, list[dict]], settings: dict[str, dict]) -> str:
    e = html.escape
    names = list(METRIC_NAMES.values())
    head = "<tr><th rowspan='2'></th><th rowspan='2'>class</th><th rowspan='2'>kind</th>" + "".join(
        f"<th colspan='{len(names)}'><a href='{e(m)}/bench.html'>{e(m)}</a></th>" for m in by_method
    )
    head += "</tr><tr>" + "".join(f"<th>{e(n)}</th>" for _ in by_method for n in names) + "</tr>"
    body = "".join(
        "<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in (r["subject"], r["class"], r["kind"]))
        + "".join(f"<td>{fmt(r[f'{m}:{k}'])}</td>" for m in by_method for k in METRIC_NAMES) + "</tr>"
        for r in method_rows(by_method)
    )  # fmt: skip
    first = next(iter(settings.values()))
    return "\n".join(
        [
            "<!doctype html>",
            "<html><head><meta charset='utf-8'><title>DreamBench results by method</title>",
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{padding:4px 10px;"
            "border-bottom:1px solid #ddd;text-align:right}td:first-child{text-align:left}</style>",
            "</head><body>",
            "<h1>DreamBench results by method</h1>",
            f"<p>Base model <code>{e(str(first['model']))}</code>, {first['max_steps']} training steps, "
            f"{first['images_per_prompt']} images × {first['num_prompts']} prompts per subject. Each method's own "
            "page (its photos and images) is linked from its name.</p>",
            f"<table>{head}{body}</table>",
            "</body></html>",
            "",
        ]
    )


def write_methods(out: Path, by_method: dict[str, list[dict]], settings: dict[str, dict]) -> None:
    """OUT/bench.md, .csv, .json, .html over the methods run so far (each method's own reports are in OUT/<method>/)."""
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "settings": settings,
        "methods": {m: {"subjects": rows, "mean": mean_row(rows)} for m, rows in by_method.items()},
        "reference": {"source": SOURCE, "rows": REFERENCE},
    }
    atomic.write_text(out / "bench.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    atomic.write_text(out / "bench.csv", methods_csv_text(by_method))
    atomic.write_text(out / "bench.md", methods_markdown(by_method, settings))
    atomic.write_text(out / "bench.html", methods_html_page(by_method, settings))
