"""dreambooth: personalise a Stable Diffusion model to one subject (DreamBooth + LoRA).

    from dreambooth import TrainConfig, GenerateConfig, train, generate
    lora_dir = train(TrainConfig(model="tiny", instance_dir="photos", instance_prompt="a photo of sks dog", output_dir="run"))
    generate(GenerateConfig(model="tiny", lora=str(lora_dir), prompt="a photo of sks dog on the grass", output_dir="images"))
"""

from .config import BenchConfig, EvaluateConfig, GenerateConfig, IdentifierConfig, TrainConfig
from .errors import TrainingError, UsageError

__all__ = ["TrainConfig", "GenerateConfig", "IdentifierConfig", "EvaluateConfig", "BenchConfig", "train", "generate", "evaluate",
           "bench", "UsageError", "TrainingError"]
__version__ = "0.1.0"


def train(cfg: TrainConfig, on_event=None, stop_event=None):
    from .train import train as _train

    return _train(cfg, on_event, stop_event)


def generate(cfg: GenerateConfig):
    from .generate import generate as _generate

    return _generate(cfg)


def evaluate(cfg: EvaluateConfig):
    from .evaluate import evaluate as _evaluate

    return _evaluate(cfg)


def bench(cfg: BenchConfig):
    from .bench import bench as _bench

    return _bench(cfg)
