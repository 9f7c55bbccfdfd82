"""Base models: the registry of embedded models; load a hub id, a local diffusers folder, a single .safetensors file
or an embedded model; say what a loaded model is (its family, generation, prediction type, native size).

Light on purpose: the CLI reads the registry (help texts, recommended settings) before torch is imported."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:
    import torch

    from .families import Family

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
HUB_ERROR_MODULES = ("huggingface_hub", "requests", "httpx", "urllib3")  # what the hub client raises when offline


# ---------------------------------------------------------------- the embedded models


@dataclass(frozen=True)
class Embedded:
    """A base model named by a word after --model: built in code or shipped in the package. Its recommended
    settings become the defaults of `train` and `generate` for it (flags and YAML still override; the saved
    config.yaml shows what was used)."""

    name: str
    summary: str  # for --help
    family: str
    build: str = ""  # "module:function" that builds the pipeline (random, seeded weights) ...
    build_args: tuple = ()
    folder: str = ""  # ... or the diffusers folder it loads from, relative to the package
    train: dict = field(default_factory=dict)  # recommended `train` settings
    generate: dict = field(default_factory=dict)  # recommended `generate` settings

    def path(self) -> Path:
        return Path(str(resources.files("dreambooth") / self.folder))

    def identity(self) -> str:
        """What the class-image bank keys this model by: a shipped folder changes with the package, so its weights'
        path and time; a built model is its name (same seed, same weights)."""
        if not self.folder:
            return self.name
        weights = sorted(self.path().glob("unet/*.safetensors")) or [self.path()]
        return f"{weights[0].resolve()}@{weights[0].stat().st_mtime_ns}"


# The world's base (dreambooth.world) was pretrained with min-SNR-5 weights on 32 px renders. These settings were
# measured to teach it a subject (README, "The world"); with the general defaults (300 steps, lr 5e-4, plain MSE)
# `a photo of sks cat on the beach` drew cats of every colour.
WORLD_TRAIN = dict(
    resolution=32,
    train_text_encoder=True,
    learning_rate=1e-3,
    text_encoder_lr=1e-3,
    rank=8,
    batch_size=2,
    max_steps=1000,
    snr_gamma=5.0,
    guidance_scale=4.0,
    sample_batch_size=50,
    num_class_images=100,
)
# At text-encoder strength 1.0 the identifier drowns the context words ("on the beach"): measured on one run,
# 1.0 -> the subject in 88 % of samples and in the asked context in 16 %; 0.8 -> 81 % and 32 %.
WORLD_GENERATE = dict(guidance=4.0, steps=25, text_encoder_scale=0.8)

EMBEDDED = {
    e.name: e
    for e in (
        Embedded(
            "tiny",
            "SD 1.x-shaped, random weights, 64 px, for tests",
            "sd",
            build="dreambooth.families.sd:build_tiny",
            build_args=("epsilon",),
        ),
        Embedded(
            "tiny-v", "as tiny, v-prediction", "sd", build="dreambooth.families.sd:build_tiny", build_args=("v_prediction",)
        ),
        Embedded("tiny-sdxl", "SDXL-shaped, random weights, 64 px", "sdxl", build="dreambooth.families.sdxl:build_tiny"),
        Embedded(
            "tiny-flux",
            "FLUX.1 [dev]-shaped, random weights, 64 px",
            "flux",
            build="dreambooth.families.flux:build_tiny",
            train=dict(guidance_scale=3.5, max_sequence_length=32),
            generate=dict(guidance=3.5),
        ),
        Embedded(
            "tiny-sd3",
            "SD3.5 Medium-shaped, random weights, 64 px",
            "sd3",
            build="dreambooth.families.sd3:build_tiny",
            train=dict(guidance_scale=5.0, max_sequence_length=32),
            generate=dict(guidance=5.0),
        ),
        Embedded(
            "tiny-qwen-image",
            "Qwen-Image-shaped, random weights, 64 px",
            "qwen-image",
            build="dreambooth.families.qwenimage:build_tiny",
            train=dict(guidance_scale=4.0, max_sequence_length=32),
            generate=dict(guidance=4.0),
        ),
        Embedded(
            "tiny-z-image",
            "Z-Image-shaped, random weights, 64 px",
            "z-image",
            build="dreambooth.families.z_image:build_tiny",
            train=dict(guidance_scale=4.0),
            generate=dict(guidance=4.0),
        ),
        Embedded(
            "tiny-flux2-klein",
            "FLUX.2 [klein]-shaped, random weights, 64 px",
            "flux2-klein",
            build="dreambooth.families.flux2_klein:build_tiny",
            train=dict(guidance_scale=4.0, max_sequence_length=32),
            generate=dict(guidance=4.0),
        ),
        Embedded(
            "world",
            "trained on the procedural world, 32 px, see `dreambooth demo`",
            "sd",
            folder="assets/world",
            train=WORLD_TRAIN,
            generate=WORLD_GENERATE,
        ),
    )
}


def embedded_help() -> str:
    return "; ".join(f"'{e.name}' ({e.summary})" for e in EMBEDDED.values())


def recommended(model: str, command: str) -> dict:
    """An embedded model's recommended settings for `command` ("train" or "generate"); {} for any other model."""
    entry = EMBEDDED.get(model)
    return dict(getattr(entry, command)) if entry else {}


def identity(model: str) -> str:
    """A model as the class-image bank keys it: an embedded model's own identity, a path with its mtime, else a hub id."""
    if model in EMBEDDED:
        return EMBEDDED[model].identity()
    path = Path(model).expanduser()
    return f"{path.resolve()}@{path.stat().st_mtime_ns}" if model and path.exists() else model


# ---------------------------------------------------------------- loading


def quiet_libraries() -> None:
    """The libraries' own info logs and progress bars drown ours."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()  # "Loading pipeline components", "Loading weights": ours show the work that matters
    tlog.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.ERROR)


def not_found(model: str) -> UsageError:
    return UsageError(
        f"--model {model}: not a local diffusers folder or .safetensors file, and not found on the hub "
        f"or in its cache (offline?); download it where there is network and pass its local path with --model"
    )


def is_hub_error(e: BaseException) -> bool:
    """The hub client raises its own types (and its HTTP libraries') when the network is down."""
    return type(e).__module__.startswith(HUB_ERROR_MODULES)


def load_pipeline(model: str, dtype: torch.dtype | None = None, allow_pickle: bool = False):
    """Load a base-model pipeline from what the user typed after --model (float32 unless `dtype`)."""
    import torch

    from .families import family_of_file

    dtype = dtype or torch.float32
    if torch.cuda.is_available():
        # fp32 matrix products on TF32 tensor cores (convolutions already are, by default): what is left in fp32
        # under autocast, and generation and scoring models in fp32, run several times faster.
        torch.backends.cuda.matmul.allow_tf32 = True
    quiet_libraries()
    entry = EMBEDDED.get(model)
    if entry is not None and entry.build:
        module, function = entry.build.split(":")
        return getattr(importlib.import_module(module), function)(*entry.build_args).to(dtype=dtype)
    if entry is not None:
        model = str(entry.path())
    from diffusers import DiffusionPipeline

    path = Path(model).expanduser()
    # SD 1.x/2.x folders carry a safety checker (a second CLIP); other pipelines ignore the keywords.
    kwargs = dict(dtype=dtype, safety_checker=None, requires_safety_checker=False)
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise UsageError(
            f"--model {model}: pickle checkpoints can run code when read; convert it to .safetensors, or pass "
            f"--allow-pickle if you trust it (it is then read with torch.load(weights_only=True))"
        )
    if path.is_file():
        if path.suffix.lower() not in (".safetensors", *PICKLE_SUFFIXES):
            raise UsageError(f"--model {model}: a single-file model must be a .safetensors checkpoint")
        family = family_of_file(path)
        cls = pipeline_class(family)
        if not hasattr(cls, "from_single_file"):
            raise UsageError(
                f"--model {model}: a {family.title} checkpoint; diffusers loads {family.title} from a diffusers folder or "
                f"hub id only, so pass one of those"
            )
        try:
            return supported(cls.from_single_file(str(path), dtype=dtype, **family.single_file_options()), model)
        except (OSError, ValueError) as e:
            raise UsageError(
                f"--model {model}: could not read it as a {family.title} checkpoint ({first_line(e)}); "
                f"pass a diffusers folder instead"
            ) from None
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise UsageError(f"--model {model}: folder has no model_index.json; pass a diffusers pipeline folder")
        try:
            return supported(DiffusionPipeline.from_pretrained(str(path), **kwargs), model)
        except (OSError, ValueError) as e:
            raise UsageError(f"--model {model}: could not load the pipeline ({first_line(e)})") from None
    if looks_like_path(model):
        raise UsageError(f"--model {model}: no such file or folder; pass a diffusers folder, a .safetensors file or a hub id")
    try:
        return supported(DiffusionPipeline.from_pretrained(model, **kwargs), model)
    except (OSError, ValueError):
        raise not_found(model) from None
    except Exception as e:
        if is_hub_error(e):
            raise not_found(model) from None
        raise


def quantization_config(mode: str, compute_dtype: torch.dtype):
    """diffusers' quantization config for `--base-quantization`: bitsandbytes NF4 (QLoRA's 4-bit NormalFloat, with
    double quantization: about 0.5 byte a weight) or LLM.int8, or torchao's fp8 weight-only."""
    if mode == "fp8":
        from diffusers import TorchAoConfig

        try:
            return TorchAoConfig("float8wo")
        except ImportError:
            raise UsageError("--base-quantization fp8: needs torchao; pip install torchao, or use nf4 or int8") from None
    from diffusers import BitsAndBytesConfig

    if mode == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute_dtype
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def quantized_denoiser(pipe, family: Family, mode: str, compute_dtype: torch.dtype, device: torch.device) -> None:
    """Replace the pipeline's denoiser by the same weights stored quantized (`--base-quantization`), whatever the
    model was loaded from (hub, folder, single file, embedded): diffusers quantizes a model as it loads it, so the
    denoiser goes through a temporary folder once."""
    import tempfile

    # in the compute dtype first: diffusers would cast to it on loading anyway, and the copy is half an fp32 one
    denoiser = getattr(pipe, family.denoiser).to(compute_dtype)
    with tempfile.TemporaryDirectory() as folder:
        denoiser.save_pretrained(folder)
        quantized = type(denoiser).from_pretrained(
            folder,
            quantization_config=quantization_config(mode, compute_dtype),
            torch_dtype=compute_dtype,
            device_map={"": str(device)},  # quantized as it lands on this process's device
        )
    pipe.register_modules(**{family.denoiser: quantized})


def pipeline_class(family: Family):
    """The diffusers class of a family's pipelines."""
    import diffusers

    return getattr(diffusers, family.pipeline_class)


def supported(pipe, model: str):
    """Only text-to-image pipelines of a known family; the safety checker is the user's business."""
    from .families import all_families

    classes = tuple(pipeline_class(f) for f in all_families())
    if not isinstance(pipe, classes):
        titles = ", ".join(f.title for f in all_families())
        raise UsageError(f"--model {model}: is a {type(pipe).__name__}; supported: {titles}")
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker, pipe.feature_extractor = None, None
    return pipe


def load_vae(vae: str, dtype: torch.dtype | None = None):
    """Another VAE for the pipeline (e.g. an fp16-safe SDXL VAE): hub id or local folder."""
    import torch
    from diffusers import AutoencoderKL

    dtype = dtype or torch.float32
    path = Path(vae).expanduser()
    try:
        return AutoencoderKL.from_pretrained(str(path) if path.exists() else vae, dtype=dtype, use_safetensors=True)
    except (OSError, ValueError):
        raise UsageError(
            f"--vae {vae}: no AutoencoderKL there, locally or on the hub; pass a local diffusers VAE folder"
        ) from None


def load_tokenizer(model: str):
    """Only the (first) tokenizer of a model, for `dreambooth identifier`."""
    entry = EMBEDDED.get(model)
    if entry is not None and entry.build:  # built in code in a moment: its family's first tokenizer (CLIP, Qwen's)
        from .families import family_of, tokenizers

        pipe = load_pipeline(model)
        return tokenizers(pipe, family_of(pipe))[0]
    from transformers import AutoTokenizer

    path = entry.path() if entry is not None else Path(model).expanduser()
    try:
        if path.is_file():
            return load_pipeline(model).tokenizer
        return AutoTokenizer.from_pretrained(str(path) if path.is_dir() else model, subfolder="tokenizer")
    except (OSError, ValueError):
        raise not_found(model) from None


def looks_like_path(model: str) -> bool:
    # A hub id is "name" or "owner/name"; anything else the user typed was meant as a path.
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


# ---------------------------------------------------------------- what a model is


@dataclass(frozen=True)
class Base:
    """A loaded base model as its configs tell it."""

    family: Family
    version: str  # "sd1", "sd2", "sdxl"; an embedded model's name; "" for another model of the family
    prediction_type: str
    native_resolution: int

    def summary(self) -> str:
        version = f" ({self.version})" if self.version else ""
        return f"{self.family.title}{version}, {self.prediction_type.removesuffix('_prediction')} prediction"


def describe(pipe, model: str = "") -> Base:
    """What `pipe` is; `model` is what --model said (an embedded model is named by its name)."""
    from .families import family_of

    family = family_of(pipe)
    version = model if model in EMBEDDED else family.version(pipe)
    return Base(family, version, family.objective.prediction(pipe.scheduler), family.native_resolution(pipe))


def native_resolution(pipe) -> int:
    from .families import family_of

    return family_of(pipe).native_resolution(pipe)


def fingerprint(pipe, family: Family) -> str:
    """A short hash of a sample of the denoiser's weights: tells two bases apart even when their shapes match."""
    import hashlib

    params = list(getattr(pipe, family.denoiser).parameters())
    digest = hashlib.sha256()
    for p in params[:2] + params[len(params) // 2 : len(params) // 2 + 1] + params[-2:]:
        if p.is_meta:  # shapes only (counting FLOPs): nothing to tell apart
            return "meta"
        digest.update(p.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
