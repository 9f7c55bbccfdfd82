"""`dreambooth evaluate`: score generated images against the subject's real photos with the DreamBooth
paper's metrics (DINO, CLIP-I, CLIP-T, PRES, DIV); print a table and write the scores as JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .. import atomic, threads
from ..config import METRIC_NAMES, EvaluateConfig, check_evaluate, metric_key
from ..errors import UsageError, warn
from . import lpips
from .embeddings import ClipEncoder, DinoEncoder, EmbeddingCache, device, open_rgb
from .inputs import find_images, identifier_from_runs, prompts_of, relative_name
from .metrics import cosine_matrix, mean, remove_identifier, rowwise_cosine

CACHE_NAME = "embeddings-cache.safetensors"


class Evaluator:
    """Loads each scoring model once and keeps the embeddings, so one instance scores many subjects."""

    def __init__(self, cfg: EvaluateConfig, cache_file: Path | None = None):
        self.cfg = cfg
        self.wanted = {metric_key(m) for m in cfg.metrics}
        self.cache = EmbeddingCache(cache_file)
        # The small file first: a wrong --lpips-net fails before the big models load.
        self.lpips = lpips.load_lpips(cfg.lpips_net) if cfg.lpips_net and "div" in self.wanted else None
        self._dino: DinoEncoder | None = None
        self._clip: ClipEncoder | None = None

    @property
    def dino(self) -> DinoEncoder:
        if self._dino is None:
            self._dino = DinoEncoder(self.cfg.dino_model)
        return self._dino

    @property
    def clip(self) -> ClipEncoder:
        if self._clip is None:
            self._clip = ClipEncoder(self.cfg.clip_model)
        return self._clip

    def load(self) -> None:
        """Load every model the wanted metrics need now, so a missing one fails before hours of work."""
        if self.wanted & {"dino", "pres"}:
            _ = self.dino
        if self.wanted & {"clip_i", "clip_t"}:
            _ = self.clip

    def embed(self, encoder, paths: list[Path]) -> torch.Tensor:
        return self.cache.embed_images(encoder, paths, self.cfg.batch_size)

    def score(
        self,
        real: list[Path],
        generated: list[Path],
        root: Path,
        prompts: Mapping[Path, str | None],
        identifier: str = "",
        class_generated: Sequence[Path] = (),
    ) -> dict:
        """Scores per image, per prompt and overall. Pairs are all generated x all real images."""
        rows = [{"file": relative_name(p, root), "prompt": prompts.get(p)} for p in generated]
        means: dict[str, float | None] = dict.fromkeys(METRIC_NAMES)
        skipped = {}
        for key, encoder in (("dino", lambda: self.dino), ("clip_i", lambda: self.clip)):
            if key in self.wanted:
                sims = cosine_matrix(self.embed(encoder(), generated), self.embed(encoder(), real))
                for row, s in zip(rows, sims.mean(dim=1).tolist()):
                    row[key] = s
                means[key] = float(sims.mean())
        if "clip_t" in self.wanted:
            with_prompt = [i for i, p in enumerate(generated) if prompts.get(p)]
            if with_prompt:
                texts = [remove_identifier(str(prompts[generated[i]]), identifier) for i in with_prompt]
                unique = sorted(set(texts))
                text_emb = self.clip.embed_texts(unique)
                image_emb = self.embed(self.clip, [generated[i] for i in with_prompt])
                text_sims = rowwise_cosine(image_emb, text_emb[[unique.index(t) for t in texts]]).tolist()
                for i, text, s in zip(with_prompt, texts, text_sims):
                    rows[i].update(scored_prompt=text, clip_t=s)
                means["clip_t"] = mean(text_sims)
            else:
                skipped["clip_t"] = "no prompts: pass --prompts or generate with `dreambooth generate`"
        if "pres" in self.wanted:
            if class_generated:
                means["pres"] = float(
                    cosine_matrix(self.embed(self.dino, list(class_generated)), self.embed(self.dino, real)).mean()
                )
            else:
                skipped["pres"] = "pass --class-generated"
        groups = group_by_prompt(generated, root, prompts)
        divs = {}
        if "div" in self.wanted:
            if self.lpips is not None:
                for label, paths in groups.items():
                    divs[label] = lpips.pairwise(self.lpips, [open_rgb(p) for p in paths], device())
                means["div"] = mean(d for ds in divs.values() for d in ds)
            else:
                skipped["div"] = "pass --lpips-net"
        by_file = {row["file"]: row for row in rows}
        per_prompt = []
        for label, paths in groups.items():
            members = [by_file[relative_name(p, root)] for p in paths]
            entry: dict[str, object] = {
                "prompt": members[0]["prompt"],
                "folder": None if members[0]["prompt"] else label,
                "images": len(paths),
            }
            for key in ("dino", "clip_i", "clip_t"):
                if key in means and means[key] is not None:
                    entry[key] = mean(m.get(key) for m in members)
            if label in divs:
                entry["div"], entry["pairs"] = mean(divs[label]), len(divs[label])
            per_prompt.append(entry)
        return {
            "means": means,
            "counts": {
                "real": len(real),
                "generated": len(generated),
                "class_generated": len(class_generated),
                "with_prompt": sum(1 for p in generated if prompts.get(p)),
            },
            "identifier": identifier,
            "models": {"dino": self.cfg.dino_model, "clip": self.cfg.clip_model, "lpips": self.cfg.lpips_net or None},
            "skipped": skipped,
            "prompts": per_prompt,
            "images": rows,
        }


def group_by_prompt(generated: list[Path], root: Path, prompts: Mapping[Path, str | None]) -> dict[str, list[Path]]:
    """Images drawn from the same prompt; images without a prompt are grouped by folder."""
    groups: dict[str, list[Path]] = {}
    for p in generated:
        label = prompts.get(p) or (relative_name(p.parent, root) if p.parent != root else ".")
        groups.setdefault(label, []).append(p)
    return groups


def fmt(value) -> str:
    return f"{value:.3f}" if value is not None else "–"


def table(result: dict) -> str:
    """A small text table: one row per prompt, the mean row, then PRES."""
    cols = ["dino", "clip_i", "clip_t", "div"]
    width = 44
    lines = [f"{'prompt':<{width}} {'n':>4}" + "".join(f" {METRIC_NAMES[c]:>7}" for c in cols)]
    for g in result["prompts"]:
        label = g["prompt"] or f"({g['folder']}, no prompt)"
        label = label if len(label) <= width else label[: width - 1] + "…"
        lines.append(f"{label:<{width}} {g['images']:>4}" + "".join(f" {fmt(g.get(c)):>7}" for c in cols))
    means = result["means"]
    lines.append(f"{'mean':<{width}} {result['counts']['generated']:>4}" + "".join(f" {fmt(means[c]):>7}" for c in cols))
    if means["pres"] is not None:
        lines.append(
            f"PRES {fmt(means['pres'])} ({result['counts']['class_generated']} class-prompt images x {result['counts']['real']} real)"
        )
    for key, why in result["skipped"].items():
        lines.append(f"{METRIC_NAMES[key]} not computed: {why}")
    return "\n".join(lines)


def evaluate(cfg: EvaluateConfig) -> dict:
    check_evaluate(cfg)
    with threads.workload(cfg.threads):
        return score_folders(cfg)


def score_folders(cfg: EvaluateConfig) -> dict:
    out = Path(cfg.output).expanduser()
    if out.is_dir():
        raise UsageError(f"--output {cfg.output}: is a folder; pass a JSON file path, e.g. {out / 'scores.json'}")
    real = find_images(cfg.real, "--real")
    root = Path(cfg.generated).expanduser()
    generated = find_images(cfg.generated, "--generated", nested=True)
    class_generated = find_images(cfg.class_generated, "--class-generated", nested=True) if cfg.class_generated else []
    prompts = prompts_of(generated, root, cfg.prompts)
    identifier = cfg.identifier or identifier_from_runs(generated)
    if "clip-t" in cfg.metrics and not identifier and any(prompts.values()):
        warn("CLIP-T: no identifier known, prompts are scored as written; pass --identifier (e.g. sks) to delete it")
    evaluator = Evaluator(cfg, out.with_name(CACHE_NAME) if cfg.cache else None)
    result = evaluator.score(real, generated, root, prompts, identifier, class_generated)
    result["real"], result["generated"] = str(cfg.real), str(cfg.generated)
    evaluator.cache.save()
    atomic.write_text(out, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(table(result))
    print(f"scores -> {out}", flush=True)
    return result
