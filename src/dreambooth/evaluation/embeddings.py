"""Image and text embeddings for the metrics: the CLS token of a self-supervised ViT (DINO) and CLIP's
image and text features.

Models load from a hub id or a local folder, safetensors weights only. Each image's embedding is kept
under (model, resolved path, mtime, size), in memory and optionally in a safetensors file, so scoring a
folder again only embeds the images that are new or changed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import atomic
from ..errors import UsageError, warn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_RESIZE, DINO_CROP = 256, 224


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def open_rgb(path: Path) -> Image.Image:
    from ..training.photos import open_photo

    try:
        return open_photo(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UsageError(f"{path}: not a readable image ({type(e).__name__}); remove it or replace it") from None


def dino_pixels(image: Image.Image) -> torch.Tensor:
    """DINO's evaluation transform, as torchvision's Resize(256, bicubic) + CenterCrop(224) + Normalize
    compute it: shorter side to 256 (longer side truncated), centre crop rounded, ImageNet statistics."""
    w, h = image.size
    short, long = min(w, h), max(w, h)
    new_short, new_long = DINO_RESIZE, int(DINO_RESIZE * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    image = image.convert("RGB").resize((new_w, new_h), Image.Resampling.BICUBIC)
    top, left = int(round((new_h - DINO_CROP) / 2.0)), int(round((new_w - DINO_CROP) / 2.0))
    image = image.crop((left, top, left + DINO_CROP, top + DINO_CROP))
    unit = np.asarray(image, dtype=np.float32) / 255.0
    normalised = (unit - np.array(IMAGENET_MEAN, dtype=np.float32)) / np.array(IMAGENET_STD, dtype=np.float32)
    return torch.from_numpy(normalised).permute(2, 0, 1).contiguous()


# ---------------------------------------------------------------- loading


def offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; read it again so a later setting counts.
    import huggingface_hub.constants as hub

    return hub.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def missing(name: str, flag: str) -> UsageError:
    return UsageError(
        f"{flag} {name}: not a local model folder and not found on the hub or in its cache (offline?); "
        f"download it where there is network (hf download {name} --local-dir DIR) and pass DIR with {flag}"
    )


def model_source(name: str, flag: str) -> str:
    """A local folder (checked here, so a typo fails before anything loads) or a hub id."""
    from ..models import looks_like_path

    path = Path(name).expanduser()
    if path.is_dir():
        if not any(path.glob("*.safetensors")):
            raise UsageError(
                f"{flag} {name}: no .safetensors weights in the folder; convert the weights to safetensors "
                f"(e.g. model.save_pretrained(DIR) with a current transformers) and pass that folder"
            )
        return str(path)
    if path.exists():
        raise UsageError(f"{flag} {name}: is a file; pass a model folder (config.json + model.safetensors) or a hub id")
    if looks_like_path(name) or not name:
        raise UsageError(f"{flag} {name}: no such folder; pass a model folder or a hub id")
    return name


def from_pretrained(load, name: str, flag: str, weights: bool = True, **kwargs):
    """`load(source, ...)` for a model or its processor, with the library's errors as one UsageError line.

    The hub cache is tried first: a cached model loads at once even where the network is down."""
    from ..models import is_hub_error

    source = model_source(name, flag)
    if weights:
        kwargs["use_safetensors"] = True  # never unpickle
    local = Path(source).is_dir()
    cache_only = [True] if local or offline() else [True, False]
    for attempt, only_cached in enumerate(cache_only, 1):
        try:
            return load(source, local_files_only=only_cached, **kwargs)
        except (OSError, ValueError) as e:
            if attempt < len(cache_only):
                continue
            if "safetensors" in str(e) and "connect" not in str(e):
                raise UsageError(
                    f"{flag} {name}: has no .safetensors weights; convert them and pass the local folder with {flag}"
                ) from None
            if local:
                raise UsageError(f"{flag} {name}: could not load it ({str(e).strip().splitlines()[0][:160]})") from None
            raise missing(name, flag) from None
        except Exception as e:
            if is_hub_error(e):
                raise missing(name, flag) from None
            raise


def model_key(kind: str, name: str) -> str:
    """Names a model in cache keys; a local folder also by its weights' mtime, so new weights embed anew."""
    path = Path(name).expanduser()
    if path.is_dir():
        stamps = sorted(f"{p.name}:{p.stat().st_mtime_ns}" for p in path.glob("*.safetensors"))
        return f"{kind}:{path.resolve()}:{','.join(stamps)}"
    return f"{kind}:{name}"


def quiet() -> None:
    from transformers.utils import logging as tlog

    from ..models import quiet_libraries

    quiet_libraries()
    tlog.disable_progress_bar()  # "Loading weights" bars of transformers 5


def features(output) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is the projected feature; 4.x a tensor.
    return output if torch.is_tensor(output) else output.pooler_output


class DinoEncoder:
    """CLS token of the last layer (after the final norm) of a self-supervised ViT, e.g. DINO ViT-S/16."""

    def __init__(self, name: str):
        from transformers import ViTModel

        quiet()
        self.key = model_key("dino", name)
        self.model = from_pretrained(ViTModel.from_pretrained, name, "--dino-model", add_pooling_layer=False).eval().to(device())

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([dino_pixels(im) for im in images])

    @torch.no_grad()
    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        other_size = self.model.config.image_size != DINO_CROP
        out = self.model(pixel_values=pixels.to(device()), interpolate_pos_encoding=other_size)
        return out.last_hidden_state[:, 0]


class ClipEncoder:
    """CLIP image features (its own processor: resize 224, centre crop 224, CLIP statistics) and text features."""

    def __init__(self, name: str):
        import transformers
        from transformers import CLIPModel, CLIPTokenizer

        quiet()
        # The PIL processor needs no torchvision; transformers 4.x has only this one, named without the suffix.
        processor_cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
        self.key = model_key("clip", name)
        self.model = from_pretrained(CLIPModel.from_pretrained, name, "--clip-model").eval().to(device())
        self.processor = from_pretrained(processor_cls.from_pretrained, name, "--clip-model", weights=False)
        self.tokenizer = from_pretrained(CLIPTokenizer.from_pretrained, name, "--clip-model", weights=False)

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    @torch.no_grad()
    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return features(self.model.get_image_features(pixel_values=pixels.to(device())))

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        limit = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt").to(device())
        return (
            features(self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]))
            .float()
            .cpu()
        )


# ---------------------------------------------------------------- cache


class EmbeddingCache:
    """Embeddings keyed by (model, resolved path, mtime, size); `file` keeps them between runs (safetensors)."""

    def __init__(self, file: Path | None = None):
        self.file, self.items, self.dirty = file, {}, False
        if file is not None and file.is_file():
            from safetensors.torch import load_file

            try:
                self.items = load_file(str(file))
            except Exception as e:  # a damaged cache only costs time: embed again
                warn(f"ignoring the embedding cache {file} ({type(e).__name__}); it is rebuilt")

    @staticmethod
    def key(model: str, path: Path) -> str:
        st = path.stat()
        raw = f"{model}\n{path.resolve()}\n{st.st_mtime_ns}\n{st.st_size}"
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()

    def embed_images(self, encoder, paths: list[Path], batch_size: int) -> torch.Tensor:
        """[len(paths), dim] float32 on the CPU; only images not cached yet go through the model, in batches."""
        keys = [self.key(encoder.key, p) for p in paths]
        first: dict = {}
        for i, k in enumerate(keys):
            if k not in self.items:
                first.setdefault(k, i)
        todo = list(first.values())
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            out = encoder.embed(encoder.pixels([open_rgb(paths[i]) for i in batch])).float().cpu()
            for i, e in zip(batch, out):
                self.items[keys[i]] = e.clone()
            self.dirty = True
        if not paths:
            return torch.empty(0, 0)
        return torch.stack([self.items[k] for k in keys])

    def save(self) -> None:
        if self.file is None or not self.dirty:
            return
        from safetensors.torch import save

        atomic.write_bytes(self.file, save({k: v.contiguous() for k, v in self.items.items()}))
        self.dirty = False
