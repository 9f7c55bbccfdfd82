"""dreambooth: personalise a text-to-image diffusion model to one subject (DreamBooth + LoRA).

Each command is a function here, taking its config dataclass:

    from dreambooth import TrainConfig, GenerateConfig, train, generate

    lora_dir = train(TrainConfig(model="tiny", instance_dir="photos", instance_prompt="a photo of sks dog", output_dir="run"))
    generate(GenerateConfig(lora=str(lora_dir), prompt="a photo of sks dog on the grass", output_dir="images"))

`dreambooth.fields.settings(TrainConfig, model="world", ...)` builds a config over an embedded model's recommended
settings, as the command line does. The functions import torch only when called. Many subjects on Ray:
`from dreambooth.fleet import fleet` (the `fleet` extra).
"""

from __future__ import annotations

from pathlib import Path

from . import optional_imports
from .config import BenchConfig, EvaluateConfig, ExportConfig, FleetConfig, GenerateConfig, IdentifierConfig, TrainConfig
from .errors import TrainingError, UsageError

__all__ = [
    "TrainConfig",
    "GenerateConfig",
    "IdentifierConfig",
    "EvaluateConfig",
    "BenchConfig",
    "ExportConfig",
    "FleetConfig",
    "UsageError",
    "TrainingError",
    "train",
    "generate",
    "evaluate",
    "bench",
    "export",
]
__version__ = "0.1.0"

optional_imports.quiet()


def train(cfg: TrainConfig, on_event=None, stop_event=None) -> Path:
    """Train a LoRA; return its output folder (see dreambooth.training.loop.train)."""
    from .training.photos import check_folder

    if cfg.instance_dir:  # the commonest mistake, answered before torch loads (seconds)
        check_folder(cfg.instance_dir)
    from .evaluation.validation_scores import validation_scorer
    from .training.loop import train as run

    return run(cfg, on_event, stop_event, validation_scorer(cfg))


def generate(cfg: GenerateConfig) -> list[Path]:
    """Draw images with a base model and a LoRA; return the image paths."""
    from .generation import generate as run

    return run(cfg)


def evaluate(cfg: EvaluateConfig) -> dict:
    """Score generated images against the real ones; return the scores."""
    from .evaluation.evaluate import evaluate as run

    return run(cfg)


def bench(cfg: BenchConfig) -> Path:
    """Run the paper's benchmark on a DreamBench-layout folder; return the output folder. With `cfg.fleet` each subject
    is a task on Ray (the `fleet` extra)."""
    if cfg.fleet:
        from .fleet.bench import bench_fleet

        return bench_fleet(cfg)
    from .evaluation.bench import bench as run

    return run(cfg)


def export(cfg: ExportConfig) -> Path:
    """Write a LoRA in another layout; return the written file."""
    from .lora.export import export as run

    return run(cfg)
