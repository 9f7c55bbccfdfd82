"""The procedural world: scenes rendered from code, a base model trained on them from scratch, readers that score
any image, and the demo. Its base model is the embedded model `world` (the registry in models.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..fields import check_each, opt
from ..models import EMBEDDED, recommended

MODEL = "world"
TEXT_ENCODER_SCALE = recommended(MODEL, "generate")["text_encoder_scale"]  # the identifier drowns context words at 1.0
DEMO_STEPS = recommended(MODEL, "train")["max_steps"]
# The demo's defaults, from the ablation in bench/RESULTS.md ("The subject in new contexts"): the photos' exact masks
# with a little of the background, and prior preservation in every context, put the subject in the asked context
# far more often than plain DreamBooth does.
MASKED_LOSS = True
MASK_BACKGROUND_WEIGHT = 0.1
CLASS_CONTEXTS = True
# Class images: the paper generates about 1,000; with the recommended 100 (about 14 per context) the LoRA learns
# them by heart and the class samples lose their variety (diversity 0.46 against 0.60-0.63 with 400-1,000).
CLASS_IMAGES = 400
# A share of the class images trained with an empty prompt: otherwise guidance's unconditional side drifts toward the
# subject, and guidance then steers every class sample away from its look (patterned dogs all but vanished after training
# a dotted one; diversity 0.46 -> 0.69 with this at 0.2).
CLASS_CAPTION_DROPOUT = 0.2
# ... and those aim at the base model's own unconditional prediction (--preserve-unconditional): the empty prompt
# then stays the base's, where trained on class images it learnt their contexts and guidance steered samples away
# from the asked one (subject in context: cat 0.41 -> 0.57, backpack 0.55 -> 0.74; the dog and teapot unchanged).
PRESERVE_UNCONDITIONAL = True
# The class half weighed twice: it keeps the contexts, the weaker side once the background's loss is down to a tenth
# (subject in context: cat 0.57 -> 0.63, dog 0.66 -> 0.71; teapot 0.54 -> 0.65). 1,500 steps instead did not help
# every subject, and cost diversity at this weight (bench/RESULTS.md).
PRIOR_LOSS_WEIGHT = 2.0
SAMPLE_STEPS, GUIDANCE = recommended(MODEL, "generate")["steps"], recommended(MODEL, "generate")["guidance"]


def folder() -> Path:
    """The shipped base model's diffusers folder (with the reader in `reader/`)."""
    return EMBEDDED[MODEL].path()


@dataclass
class PretrainWorldConfig:
    output_dir: str = opt("world-pretrain", "folder for the stages' checkpoints and the finished model (output_dir/model)")
    seed: int = opt(0, "seed for weights, renders, captions and noise")
    autoencoder_steps: int = opt(1500, "autoencoder training steps")
    diffusion_steps: int = opt(5000, "UNet + text encoder training steps")
    reader_steps: int = opt(1500, "steps of the classifier that reads class, colour, pattern and context from images")
    batch_size: int = opt(64, "renders per step")
    reader_check_renders: int = opt(1024, "fresh renders the finished reader's accuracy is measured on")
    learning_rate: float = opt(1e-3, "peak learning rate of every stage (cosine decay)")
    checkpoint_minutes: float = opt(5.0, "minutes between diffusion checkpoints (a killed run resumes from the last)")


def check_pretrain_world(cfg: PretrainWorldConfig) -> None:
    check_each(
        cfg,
        ["autoencoder_steps", "diffusion_steps", "reader_steps", "batch_size", "reader_check_renders"],
        lambda v: v >= 1,
        "must be at least 1",
    )
    if not cfg.learning_rate > 0:
        raise UsageError("--learning-rate must be positive")
