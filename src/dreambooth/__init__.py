"""dreambooth: personalise a Stable Diffusion model to one subject (DreamBooth + LoRA).

Each command is a function in the module of the same name, taking its config dataclass:

    from dreambooth import TrainConfig, GenerateConfig
    from dreambooth.train import train
    from dreambooth.generate import generate

    lora_dir = train(TrainConfig(model="tiny", instance_dir="photos", instance_prompt="a photo of sks dog", output_dir="run"))
    generate(GenerateConfig(lora=str(lora_dir), prompt="a photo of sks dog on the grass", output_dir="images"))

(The package exports no `train` function itself: importing the `dreambooth.train` module would replace it.)
"""

from .config import BenchConfig, EvaluateConfig, ExportConfig, GenerateConfig, IdentifierConfig, TrainConfig
from .errors import TrainingError, UsageError

__all__ = ["TrainConfig", "GenerateConfig", "IdentifierConfig", "EvaluateConfig", "BenchConfig", "ExportConfig",
           "UsageError", "TrainingError"]
__version__ = "0.1.0"
