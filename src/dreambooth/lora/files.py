"""LoRA files: saved and loaded in diffusers' layout, read in any layout this tool knows, checked against a base
model before loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import atomic
from ..errors import UsageError
from ..fields import saved_settings
from .adapter import ADAPTER, find_module

WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights in diffusers' key layout (what `load_lora_weights` expects)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(model))


def adapter_metadata(model: Any) -> dict:
    return model.peft_config["default"].to_dict()


def save_lora(
    out_dir: str | Path, pipeline_cls, adapted: dict[str, torch.nn.Module], metadata: dict[str, object] | None = None
) -> Path:
    """Write OUT_DIR/pytorch_lora_weights.safetensors atomically; diffusers' `load_lora_weights` reads it.

    `adapted` maps component names (unet, text_encoder, ...) to models carrying an adapter;
    `metadata` (base model, family, prompt, ...) goes into the safetensors header beside diffusers' own."""
    out_dir = Path(out_dir)
    tmp = atomic.temp_dir_beside(out_dir / ".lora")
    kwargs = {}
    for name, model in adapted.items():
        kwargs[f"{name}_lora_layers"] = lora_state_dict(model)
        kwargs[f"{name}_lora_adapter_metadata"] = adapter_metadata(model)
    try:
        pipeline_cls.save_lora_weights(tmp, safe_serialization=True, **kwargs)
        if metadata:
            add_header_metadata(tmp / WEIGHT_NAME, {f"dreambooth.{k}": str(v) for k, v in metadata.items()})
        final = out_dir / WEIGHT_NAME
        (tmp / WEIGHT_NAME).replace(final)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return final


def add_header_metadata(path: Path, extra: dict[str, str]) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata={**meta, **extra})


OLD_WEIGHT_NAMES = ("lora_weight.safetensors", "lora_weight.pt")  # cloneofsimo/lora's training script


def find_weights(lora: str | Path, allow_pickle: bool = False) -> Path:
    path = Path(lora).expanduser()
    if path.is_dir():
        found = [path / n for n in (WEIGHT_NAME, *OLD_WEIGHT_NAMES) if (path / n).is_file()]
        path = found[0] if found else path / WEIGHT_NAME
    if not path.is_file():
        raise UsageError(
            f"--lora {lora}: no {WEIGHT_NAME} there; pass a folder made by `dreambooth train` or the .safetensors file"
        )
    if path.suffix.lower() != ".safetensors" and not allow_pickle:
        raise UsageError(
            f"--lora {lora}: not a .safetensors file; pickles can run code when read — pass --allow-pickle "
            f"only if you trust it (it is then read with torch.load(weights_only=True))"
        )
    return path


def read_lora(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str], dict | None]:
    """(shape of each tensor, header metadata, the tensors themselves when they came from a pickle)."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, dict(f.metadata() or {}), None
        except Exception as e:  # safetensors raises its own error type for a damaged header
            raise UsageError(f"--lora {path}: not a readable safetensors file ({type(e).__name__}); is it complete?") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UsageError(f"--lora {path}: could not be read as a weights-only pickle ({type(e).__name__})") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UsageError(f"--lora {path}: holds no flat dict of tensors; export it as .safetensors")
    return {k: tuple(v.shape) for k, v in state.items()}, {}, state


LAYOUTS = (  # (down, up) key endings: peft, diffusers, diffusers' older text-encoder layout
    (".lora_A.weight", ".lora_B.weight"),
    (".lora.down.weight", ".lora.up.weight"),
    (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"),
)


# diffusers' converter for non-diffusers files still speaks the old attention-processor layout
PROCESSOR_KEYS = {
    **{
        f".processor.{p}_lora.": f".{m}.lora."
        for p, m in (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out", "to_out.0"))
    },
    **{
        f".self_attn.{p}_lora.": f".self_attn.{m}.lora."
        for p, m in (("to_q", "q_proj"), ("to_k", "k_proj"), ("to_v", "v_proj"), ("to_out", "out_proj"))
    },
}


def parse_key(key: str) -> tuple[str, str, str] | None:
    """'unet.<module>.lora.down.weight' (or another layout's) -> ('unet', '<module>', 'down'); None if unknown."""
    component, _, rest = key.partition(".")
    for old, new in PROCESSOR_KEYS.items():
        rest = rest.replace(old, new)
    for down, up in LAYOUTS:
        if rest.endswith(down):
            return component, rest[: -len(down)], "down"
        if rest.endswith(up):
            return component, rest[: -len(up)], "up"
    return None


def lora_modules(shapes: dict[str, tuple[int, ...]]) -> dict[tuple[str, str], tuple[int, int]]:
    """(component, module path) -> (in_features, out_features), for the keys in a known layout."""
    out: dict[tuple[str, str], list] = {}
    for key, shape in shapes.items():
        parsed = parse_key(key)
        if parsed is not None:
            component, module, part = parsed
            entry = out.setdefault((component, module), [None, None])
            entry[0 if part == "down" else 1] = shape[1] if part == "down" else shape[0]
    return {k: tuple(v) for k, v in out.items()}


def check_fits(pipe, shapes: dict[str, tuple[int, ...]], meta: dict[str, str], lora: str, model: str) -> None:
    """Refuse a LoRA made for another family or generation, or whose modules are missing from `pipe` or have other
    sizes there, naming both models."""
    from ..families import all_families, by_name
    from ..models import describe

    base = describe(pipe, model)
    here = base.version or base.family.name
    made_for = meta.get("dreambooth.base_model", "another base model")
    family = by_name(meta.get("dreambooth.family", ""))
    version = meta.get("dreambooth.version") or meta.get("dreambooth.family", "")  # older files wrote it as the family
    released = {v for f in all_families() for v in f.versions}  # generations whose LoRAs never fit one another
    if (family is not None and family != base.family) or (
        version in released and base.version in released and version != base.version
    ):
        raise UsageError(
            f"--lora {lora}: made for {made_for} ({version}), but --model {model} is {here}; pass the --model it was trained on"
        )
    for (component, module_path), (n_in, n_out) in lora_modules(shapes).items():
        target = getattr(pipe, component, None)
        layer = find_module(target, module_path) if target is not None else None
        have = (getattr(layer, "in_features", None), getattr(layer, "out_features", None)) if layer is not None else None
        if have != (n_in, n_out):
            where = f"{component}.{module_path}"
            detail = f"{where} is {n_in}->{n_out} there but {'missing' if have is None else f'{have[0]}->{have[1]}'} here"
            raise UsageError(
                f"--lora {lora}: made for {made_for}, not for --model {model} ({here}): {detail}; "
                f"pass the --model it was trained on"
            )


def load_lora(
    pipe,
    lora: str | Path,
    unet_scale: float = 1.0,
    text_encoder_scale: float = 1.0,
    allow_pickle: bool = False,
    model: str = "the base model",
) -> None:
    """Load a LoRA into `pipe` with separate strengths for its UNet and text-encoder parts."""
    from ..families import family_of
    from . import cloneofsimo

    path = find_weights(lora, allow_pickle)
    state: dict | None  # the tensors when they had to be converted or unpickled; None: diffusers reads the file
    meta: dict[str, str] = {}
    if cloneofsimo.is_cloneofsimo(path):
        state = cloneofsimo.convert(path, pipe, allow_pickle)
        shapes = {k: tuple(v.shape) for k, v in state.items()}
    else:
        shapes, meta, state = read_lora(path)
    check_fits(pipe, shapes, meta, str(lora), model)
    try:
        if state is None:
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=ADAPTER)
        else:
            pipe.load_lora_weights(state, adapter_name=ADAPTER)
    except (ValueError, RuntimeError, KeyError) as e:
        raise UsageError(
            f"--lora {lora}: does not fit --model {model} ({str(e).splitlines()[0][:160]}); pass the --model it was trained on"
        ) from None
    family = family_of(pipe)
    scales = {family.denoiser: unet_scale}
    for name in family.text_encoders:
        if getattr(getattr(pipe, name, None), "peft_config", None):
            scales[name] = text_encoder_scale
    pipe.set_adapters(ADAPTER, adapter_weights=scales)


def training_config(lora_dir: Path) -> dict:
    """Base model and VAE from the config.yaml that `dreambooth train` wrote beside the weights, or {}."""
    return {k: str(v) for k, v in saved_settings(lora_dir).items() if k in ("model", "vae") and v}
