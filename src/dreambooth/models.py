"""Base models: load a hub id, a local diffusers folder or a single .safetensors file, or build the
embedded tiny model; read what family a model is (which sets the training target)."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import torch

from .errors import UsageError

TINY_MODELS = {"tiny": "epsilon", "tiny-v": "v_prediction", "tiny-sdxl": "epsilon"}
WORLD = "world"  # the base model trained on the procedural world (dreambooth.world), shipped in the package
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def quiet_libraries() -> None:
    """The libraries' own info logs and progress bars drown ours."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    logging.getLogger("accelerate").setLevel(logging.ERROR)


def tokenizer_dir() -> Path:
    return Path(str(resources.files("dreambooth") / "assets" / "clip_tokenizer"))


def world_dir() -> Path:
    return Path(str(resources.files("dreambooth") / "assets" / "world"))


def load_clip_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(tokenizer_dir())


def build_tiny_pipeline(prediction_type: str = "epsilon", seed: int = 0):
    """A tiny SD-1.x-shaped pipeline with random weights and the real SD 1.x tokenizer.

    64 px images, 32x32x4 latents. Same seed -> bitwise the same weights, so a LoRA trained on
    `tiny` loads onto the `tiny` built by any later command.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = load_clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_text_encoder(tokenizer, projection: bool, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def build_tiny_sdxl_pipeline(seed: int = 0):
    """A tiny SDXL-shaped pipeline: two text encoders (the second with a pooled projection), micro-conditioning
    time ids, 64 px. Random weights, seeded; the real SD tokenizer for both encoders."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = load_clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six time ids + the pooled text embedding
        cross_attention_dim=64,  # both encoders' hidden states side by side
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=32, sample_size=64)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=tiny_text_encoder(tokenizer, False, seed + 2), text_encoder_2=tiny_text_encoder(tokenizer, True, seed + 3),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler, add_watermarker=False,
    )


def is_sdxl(pipe) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


def checkpoint_is_sdxl(path: Path) -> bool:
    """SDXL single-file checkpoints hold a second text encoder under `conditioner.embedders.1`."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return any(k.startswith("conditioner.embedders.1") for k in f.keys())
    except Exception:
        return False


def not_found(model: str) -> UsageError:
    return UsageError(
        f"--model {model}: not a local diffusers folder or .safetensors file, and not found on the hub "
        f"or in its cache (offline?); download it where there is network and pass its local path with --model"
    )


def load_pipeline(model: str, dtype: torch.dtype = torch.float32, allow_pickle: bool = False):
    """Load a Stable Diffusion pipeline from what the user typed after --model."""
    quiet_libraries()
    if model == "tiny-sdxl":
        return build_tiny_sdxl_pipeline().to(dtype=dtype)
    if model in TINY_MODELS:
        return build_tiny_pipeline(TINY_MODELS[model]).to(dtype=dtype)
    if model == WORLD:
        model = str(world_dir())
    from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    path = Path(model).expanduser()
    # SD 1.x/2.x folders carry a safety checker (a second CLIP); SDXL pipelines ignore the keyword.
    kwargs = dict(torch_dtype=dtype, safety_checker=None, requires_safety_checker=False)
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise UsageError(f"--model {model}: pickle checkpoints can run code when read; convert it to .safetensors, or pass "
                         f"--allow-pickle if you trust it (it is then read with torch.load(weights_only=True))")
    if path.is_file():
        if path.suffix.lower() not in (".safetensors", *PICKLE_SUFFIXES):
            raise UsageError(f"--model {model}: a single-file model must be a .safetensors checkpoint")
        sdxl = checkpoint_is_sdxl(path)
        cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
        try:
            return supported(cls.from_single_file(str(path), **({"torch_dtype": dtype} if sdxl else kwargs)), model)
        except (OSError, ValueError) as e:
            raise UsageError(f"--model {model}: could not read it as an SD checkpoint ({first_line(e)}); "
                             f"pass a diffusers folder instead") from None
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
    except Exception as e:  # the hub client raises its own types when the network is down
        if type(e).__module__.startswith(("huggingface_hub", "requests", "httpx", "urllib3")):
            raise not_found(model) from None
        raise


def supported(pipe, model: str):
    """Only SD 1.x/2.x and SDXL text-to-image pipelines; the safety checker is the user's business."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if not isinstance(pipe, (StableDiffusionPipeline, StableDiffusionXLPipeline)):
        raise UsageError(f"--model {model}: is a {type(pipe).__name__}; only Stable Diffusion 1.x/2.x and SDXL are supported")
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker, pipe.feature_extractor = None, None
    return pipe


def load_vae(vae: str, dtype: torch.dtype = torch.float32):
    """Another VAE for the pipeline (e.g. an fp16-safe SDXL VAE): hub id or local folder."""
    from diffusers import AutoencoderKL

    path = Path(vae).expanduser()
    try:
        return AutoencoderKL.from_pretrained(str(path) if path.exists() else vae, torch_dtype=dtype, use_safetensors=True)
    except (OSError, ValueError):
        raise UsageError(f"--vae {vae}: no AutoencoderKL there, locally or on the hub; pass a local diffusers VAE folder") from None


def load_tokenizer(model: str):
    """Only the tokenizer of a model, for `dreambooth identifier`."""
    if model in TINY_MODELS:
        return load_clip_tokenizer()
    from transformers import CLIPTokenizer

    path = world_dir() if model == WORLD else Path(model).expanduser()
    try:
        if path.is_file():
            return load_pipeline(model).tokenizer
        return CLIPTokenizer.from_pretrained(str(path) if path.is_dir() else model, subfolder="tokenizer")
    except (OSError, ValueError):
        raise not_found(model) from None


def looks_like_path(model: str) -> bool:
    # A hub id is "name" or "owner/name"; anything else the user typed was meant as a path.
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def describe(pipe) -> dict:
    """The model's family as its configs tell it: what the UNet predicts and which SD generation it is."""
    prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
    width = pipe.text_encoder.config.hidden_size
    if is_sdxl(pipe):
        family = "tiny-sdxl" if width < 256 else "sdxl"
    else:
        family = {768: "sd1", 1024: "sd2"}.get(width, "tiny" if width < 256 else "unknown")
    return {
        "family": family,
        "prediction_type": prediction_type,
        "native_resolution": native_resolution(pipe),
    }


def native_resolution(pipe) -> int:
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
