"""OUT/fleet.json and OUT/fleet.html: one row per subject (state, error, time, final loss, scores, files), rewritten
atomically at every change, so a reader (the web page, a script, a person refreshing the page) never sees half a file."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

from .. import atomic
from ..lora.files import WEIGHT_NAME
from ..training import progress

JSON_NAME = "fleet.json"
HTML_NAME = "fleet.html"
STATES = ("queued", "running", "done", "failed")
LOG_NAME = "fleet.log"  # a task's output, in its subject's folder
TASK_NAME = "fleet-task.json"  # where and since when a task runs: pid, node, start time


def new_row(name: str, state: str = "queued", error: str = "") -> dict:
    return {"name": name, "state": state, "error": error, "seconds": None, "loss": None, "lora": "", "scores": {}}


def run_files(out: Path) -> dict:
    """What a finished run folder tells: its LoRA file, its last loss read, and the scores of its validation
    (the kept step's with --keep-best, else the last row of validation/scores.csv)."""
    lines = progress.read(out)
    return {
        "lora": str(out / WEIGHT_NAME) if (out / WEIGHT_NAME).is_file() else "",
        "loss": lines[-1]["loss"] if lines else None,
        "scores": final_scores(out),
    }


def final_scores(out: Path) -> dict:
    try:
        with open(out / "validation" / "scores.csv", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}
    if not rows:
        return {}
    kept = kept_step(out)
    row = next((r for r in rows if kept is not None and str(r.get("step")) == str(kept)), rows[-1])
    scores = {}
    for key, value in row.items():
        try:
            scores[key] = int(value) if key == "step" else round(float(value), 4)
        except (TypeError, ValueError):
            continue
    return scores


def kept_step(out: Path) -> int | None:
    """The step --keep-best made the LoRA (validation/best.safetensors' header, read without loading torch)."""
    try:
        with open(out / "validation" / "best.safetensors", "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        return int(json.loads(header["__metadata__"]["kept"])["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read(out: Path) -> list[dict]:
    """The rows of OUT/fleet.json; [] when there is none or it cannot be read."""
    try:
        data = json.loads((Path(out) / JSON_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    rows = data.get("subjects") if isinstance(data, dict) else None
    return [r for r in rows if isinstance(r, dict) and "name" in r] if isinstance(rows, list) else []


def counts(rows: list[dict]) -> dict[str, int]:
    return {state: sum(r["state"] == state for r in rows) for state in STATES}


def write(out: Path, rows: list[dict], fleet_file: str = "") -> None:
    data = {"fleet": fleet_file, "counts": counts(rows), "subjects": rows}
    atomic.write_text(out / JSON_NAME, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    atomic.write_text(out / HTML_NAME, page(rows, fleet_file))


def cell(value) -> str:
    if value is None or value == "" or value == {}:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {cell(v)}" for k, v in value.items() if k != "step")
    return str(value)


def table(rows: list[dict]) -> str:
    """The rows as an HTML table (fleet.html, and the web page's Gallery)."""
    colours = {"done": "#dfd", "failed": "#fdd", "running": "#ffd", "queued": "#eee"}
    body = "".join(
        f"<tr style='background:{colours.get(r['state'], '#fff')}'><td>{html.escape(r['name'])}</td>"
        f"<td>{html.escape(r['state'])}</td><td>{cell(r.get('seconds'))}</td><td>{cell(r.get('loss'))}</td>"
        f"<td>{html.escape(cell(r.get('scores')))}</td><td>{html.escape(r.get('lora') or '')}</td>"
        f"<td>{html.escape(r.get('error') or '')}</td></tr>"
        for r in rows
    )
    summary = ", ".join(f"{n} {state}" for state, n in counts(rows).items())
    return (
        f"<p>{summary}</p><table class='fleet'><tr><th>subject</th><th>state</th><th>seconds</th><th>final loss</th>"
        f"<th>scores</th><th>LoRA</th><th>error</th></tr>{body}</table>"
    )


def page(rows: list[dict], fleet_file: str) -> str:
    return (
        "<!doctype html><meta charset='utf-8'><title>dreambooth fleet</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:3px 10px;border-bottom:1px solid #ccc;"
        "text-align:left;vertical-align:top}</style>"
        f"<h1>Fleet {html.escape(fleet_file)}</h1>{table(rows)}"
    )
