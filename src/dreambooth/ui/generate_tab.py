"""The Generate tab's actions: list runs, draw images with one, offer the images and the LoRA files."""

from __future__ import annotations

from pathlib import Path

from ..config import GenerateConfig
from ..errors import UsageError
from ..lora.files import which_file_where
from . import pictures, runs


def run_info(workspace: Path, run: str) -> tuple[str, str, list[str]]:
    """(description, a prompt to start from, the LoRA files to download) for the chosen run; the description says which
    file is for which program."""
    run_dir = runs.run_path(workspace, run)
    if run_dir is None:
        return "Choose a finished run.", "", []
    cfg = runs.run_config(run_dir)
    prompt = str(cfg.get("instance_prompt") or "")
    files = runs.lora_files(run_dir)
    info = (
        f"**{run}** — base model `{cfg.get('model', '?')}`, {cfg.get('max_steps', '?')} steps, rank {cfg.get('rank', '?')}"
        f"{', text-encoder LoRA' if cfg.get('train_text_encoder') else ''}; instance prompt *{prompt or '?'}*. "
        f"Downloads: {which_file_where([p.name for p in files])}."
    )
    return info, prompt, [str(p) for p in files]


def make_images(workspace: Path, run, prompt, negative, num_images, steps, guidance, unet_scale, te_scale, seed):
    """Draw with the run's LoRA, exactly as `dreambooth generate --lora RUN` would: (gallery, files, message)."""
    from ..generation import generate  # imported here: the page opens without loading torch

    run_dir = runs.run_path(workspace, run)
    if run_dir is None:
        return [], [], "Error: Choose a finished run first"
    prompt = (prompt or "").strip()
    if not prompt:
        return [], [], "Error: Write a prompt, e.g. the instance prompt plus a scene"
    out = runs.next_images_folder(workspace, run, prompt)
    try:
        cfg = GenerateConfig(
            lora=str(run_dir),
            prompt=prompt,
            negative_prompt=(negative or "").strip(),
            num_images=int(num_images),
            steps=int(steps),
            guidance=float(guidance),
            unet_scale=float(unet_scale),
            text_encoder_scale=float(te_scale),
            seed=int(seed),
            output_dir=str(out),
        )
        paths = generate(cfg)
    except (UsageError, ValueError, TypeError) as e:
        return [], [], f"Error: {e}"
    files = [str(p) for p in paths] + ([str(out / "grid.png")] if (out / "grid.png").is_file() else [])
    shown = [(str(pictures.enlarged(p, workspace)), p.name) for p in paths]  # small ones enlarged; downloads as drawn
    return shown, files, f"{len(paths)} images in {out.relative_to(workspace)}"
