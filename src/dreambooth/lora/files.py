"""LoRA files: saved and loaded in diffusers' layout, read in any layout this tool knows, checked against a base
model before loading.

The native file (`pytorch_lora_weights.safetensors`) is written so that every reader applies it the same way: text-encoder
modules are named as released checkpoints name them (CLIP's `text_model.…`, which transformers 5 no longer has and
older diffusers stacks need), a UNet's attention projections in the older attention-processor spelling (the one both
ComfyUI and diffusers read: `keys.attention_processor_spelling`), and each module's alpha/rank is multiplied into its up weight, since diffusers' layout has
no tensor for alpha (a header entry alone is read by recent diffusers only). Reading accepts either spelling and
either kind of file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import atomic
from ..errors import UsageError
from ..fields import saved_settings
from .adapter import ADAPTER, find_module, module_path
from .keys import MAGNITUDE, attention_processor_spelling, key_parts, parse_key, stored_alphas
from .lycoris import is_lycoris, kind_of_model, saved_config, split_part

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
KOHYA_NAME = "lora_kohya.safetensors"  # the same LoRA in kohya's layout (`--export kohya`)
COMFYUI_NAME = "lora_comfyui.safetensors"  # the diffusers file with the modules ComfyUI has no diffusers name for
# Which file each program loads, in the words the last line of `train`, the model card and the page use.
PROGRAMS = {WEIGHT_NAME: "diffusers", KOHYA_NAME: "ComfyUI, A1111 / Forge and sd-scripts"}


# A LoKr / LoHa: diffusers' load_lora_weights reads neither file for these families; sd-scripts trains LyCORIS through
# the lycoris package, and its loading of this layout was not checked.
LYCORIS_PROGRAMS = {WEIGHT_NAME: "dreambooth generate", KOHYA_NAME: "ComfyUI, A1111 / Forge"}


def which_file_where(names: list[str], lycoris: bool = False) -> str:
    """'pytorch_lora_weights.safetensors for diffusers, lora_kohya.safetensors for ComfyUI, …' for the files `names`."""
    programs = LYCORIS_PROGRAMS if lycoris else PROGRAMS
    return ", ".join(f"{name} for {where}" for name, where in programs.items() if name in names)


# Text encoders whose module names transformers 5 shortened (CLIPTextModel lost its `text_model.` level). Released
# checkpoints, the LoRAs people share and transformers 4 (which older diffusers stacks run) keep the longer names, and
# diffusers with either transformers reads them: files are written with them.
RELEASED_PREFIXES = {"CLIPTextModel": "text_model."}


def released_path(model: Any, path: str) -> str:
    """A module path of `model` as released checkpoints spell it, whatever transformers is installed."""
    prefix = RELEASED_PREFIXES.get(type(model).__name__, "")
    return prefix + path if prefix and not path.startswith(prefix) else path


def lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights in diffusers' key layout (what `load_lora_weights` expects)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    # the adapter alone: peft adds a resized embedding table (new tokens) otherwise; its rows go to the _emb file
    peft = get_peft_model_state_dict(model, save_embedding_layers=False)
    converted = convert_state_dict_to_diffusers(peft)
    # The converter knows the UNet's and CLIP's module names. On a model where it renames only some keys (a
    # transformer's to_q but not its add_q_proj) the result is a mix no loader reads: keep peft's layout there, as
    # diffusers' own DreamBooth scripts for those models (FLUX.1, SD3) save it.
    if any(".lora_A." in k or ".lora_B." in k for k in converted):
        return peft
    return converted


def adapter_metadata(model: Any) -> dict:
    return model.peft_config["default"].to_dict()


def scale_in_weights_metadata(config: dict, adapted: list[str]) -> dict:
    """peft's config for an adapter whose up weights already carry alpha/rank: every module's alpha is its rank.
    Where some modules were excluded (no gradient reaches them), the config names the `adapted` modules one by one
    instead: a loader then adds adapters exactly where the file has weights, and warns about nothing."""
    if config.get("exclude_modules"):
        config = {**config, "target_modules": sorted(adapted), "exclude_modules": None}
    return {**config, "lora_alpha": config["r"], "alpha_pattern": dict(config.get("rank_pattern") or {})}


def adapted_modules(model) -> list[str]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [name for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def save_lora(
    out_dir: str | Path, pipeline_cls, adapted: dict[str, torch.nn.Module], metadata: dict[str, object] | None = None
) -> Path:
    """Write OUT_DIR/pytorch_lora_weights.safetensors atomically; diffusers' `load_lora_weights` reads it.

    `adapted` maps component names (unet, text_encoder, ...) to models carrying an adapter;
    `metadata` (base model, family, prompt, ...) goes into the safetensors header beside diffusers' own."""
    from peft.utils import get_peft_model_state_dict

    out_dir = Path(out_dir)
    tmp = atomic.temp_dir_beside(out_dir / ".lora")
    kwargs = {}
    for name, model in adapted.items():
        if kind_of_model(model) != "lora":
            # LoKr / LoHa: the factors as trained under released module names, peft's config in the header
            spell = lambda module: released_path(model, module)  # noqa: E731
            kwargs[f"{name}_lora_layers"] = {
                f"{spell(module)}.{part}": v
                for k, v in get_peft_model_state_dict(model, save_embedding_layers=False).items()
                for module, part in [split_part(k) or ("", "")]
            }
            kwargs[f"{name}_lora_adapter_metadata"] = saved_config(model, [spell(m) for m in adapted_modules(model)])
            continue
        config = adapter_metadata(model)
        layers = native_tensors(
            {f"{name}.{k}": v for k, v in lora_state_dict(model).items()},
            {name: float(config["lora_alpha"])},
            lambda component, module: released_path(adapted.get(component), module),
        )
        layers = {k.removeprefix(f"{name}."): v for k, v in layers.items()}
        if name == "unet" and not any(MAGNITUDE in k for k in layers):  # DoRA keeps peft's spelling: ComfyUI reads
            layers = {attention_processor_spelling(k): v for k, v in layers.items()}  # no magnitude vectors anyway
        kwargs[f"{name}_lora_layers"] = layers
        kwargs[f"{name}_lora_adapter_metadata"] = scale_in_weights_metadata(config, adapted_modules(model))
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


def write_comfyui_copy(native: Path, component: str, renames: dict[str, str]) -> Path | None:
    """Beside the diffusers file, the same LoRA for ComfyUI when it has adapted modules that ComfyUI's key map has no
    diffusers name for: those modules under ComfyUI's own weight names (`diffusion_model.<name>`, which its generic
    map reads), the rest as they are. None when there is nothing to rename. The diffusers file cannot hold both
    spellings: a `diffusion_model.` key makes diffusers read the whole file as another layout."""
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(str(native), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    renamed, out = 0, {}
    for key, tensor in tensors.items():
        parts = key_parts(key)
        if parts and parts[0] == component and parts[1] in renames:
            key, renamed = f"diffusion_model.{renames[parts[1]]}{parts[2]}", renamed + 1
        out[key] = tensor
    if not renamed:
        return None
    final = native.parent / COMFYUI_NAME
    atomic.write_bytes(final, save(out, metadata=meta))
    return final


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


def native_tensors(
    state: dict[str, torch.Tensor], alphas: dict[str, float], spell: Callable[[str, str], str]
) -> dict[str, torch.Tensor]:
    """A LoRA in a layout `parse_key` reads, as the native file holds it: each key's module renamed by
    `spell(component, module)`, and the up weight of each module of a component in `alphas` multiplied by alpha/rank
    (the strength peft applied while training), so that readers that know no alpha apply the trained strength."""
    out = {}
    for key, tensor in state.items():
        parts = key_parts(key)
        if parts is None:
            raise UsageError(f"LoRA key {key!r} is in no layout this tool knows; export it from a `dreambooth train` folder")
        component, module, ending, part = parts
        if part == "up" and component in alphas and alphas[component] != tensor.shape[1]:
            tensor = tensor * (alphas[component] / tensor.shape[1])
        out[f"{component}.{spell(component, module)}{ending}"] = tensor.contiguous()
    return out


def lora_modules(shapes: dict[str, tuple[int, ...]]) -> dict[tuple[str, str], tuple[int, int]]:
    """(component, module path) -> (in_features, out_features), for the keys in a known layout."""
    out: dict[tuple[str, str], list] = {}
    for key, shape in shapes.items():
        parsed = parse_key(key)
        if parsed is not None:
            component, module, part = parsed
            entry = out.setdefault((component, module), [None, None])
            # a down weight is rank x in; an up weight (out x rank) and a DoRA magnitude (out) both give out
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
    for (component, path_in_file), (n_in, n_out) in lora_modules(shapes).items():
        target = getattr(pipe, component, None)
        layer = find_module(target, path_in_file) if target is not None else None
        have = (getattr(layer, "in_features", None), getattr(layer, "out_features", None)) if layer is not None else None
        if have != (n_in, n_out):
            where = f"{component}.{path_in_file}"
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
    if is_lycoris(shapes):
        load_lycoris(pipe, path, state, meta, unet_scale, text_encoder_scale, str(lora), model)
        return
    check_fits(pipe, shapes, meta, str(lora), model)
    if shapes and all(parse_key(k) is not None for k in shapes):
        # A layout this tool writes (or wrote): handed to diffusers named as this pipeline's modules are, whichever
        # spelling the file has, and with any alpha its header alone recorded in the weights, which every
        # diffusers version applies as they are.
        if state is None:
            from safetensors.torch import load_file

            state = load_file(str(path))
        state = native_tensors(
            state, stored_alphas(meta), lambda component, module: module_path(getattr(pipe, component), module) or module
        )
    elif any(k.endswith(".lora_down.weight") for k in shapes) and not diffusers_reads_kohya_of(pipe):
        # A kohya file at sizes diffusers' reader of the family's kohya files does not know (FLUX.1's at other
        # widths than the released model's): split by this tool, as trained, then applied at alpha / rank.
        from safetensors.torch import load_file

        from .kohya import from_kohya

        weights, alphas = from_kohya(load_file(str(path)), family_of(pipe), pipe)
        per_component = {component: alpha for (component, _), alpha in alphas.items()}
        state = native_tensors(
            weights, per_component, lambda component, module: module_path(getattr(pipe, component), module) or module
        )
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


def load_lycoris(
    pipe, path: Path, state: dict | None, meta: dict[str, str], unet_scale: float, text_encoder_scale: float, lora: str,
    model: str,
) -> None:  # fmt: skip
    """A LoKr / LoHa file, in this tool's diffusers-side layout or LyCORIS' kohya-style one, added to `pipe` through peft
    (diffusers' `load_lora_weights` reads neither for these families)."""
    from ..families import family_of
    from . import lycoris

    family = family_of(pipe)
    made_for = meta.get("dreambooth.family", "")
    if made_for and made_for != family.name and made_for not in family.legacy_names:
        raise UsageError(
            f"--lora {lora}: made for a {made_for} model, but --model {model} is {family.title}; pass the --model it was trained on"
        )
    if state is None:
        from safetensors.torch import load_file

        state = load_file(str(path))
    if any(k.startswith("lora_") for k in state):  # LyCORIS' kohya-style names
        from .kohya import from_kohya_lycoris

        weights, configs = from_kohya_lycoris(state, family, pipe)
    else:
        weights, configs = state, lycoris.configs_in_header(meta)
    lycoris.load_into(pipe, weights, configs, ADAPTER)
    scales = {family.denoiser: unet_scale, **{name: text_encoder_scale for name in family.text_encoders}}
    lycoris.set_scales(pipe, ADAPTER, scales)


def diffusers_reads_kohya_of(pipe) -> bool:
    from ..families import family_of

    family = family_of(pipe)
    return family.diffusers_reads_kohya(getattr(pipe, family.denoiser).config)


def training_config(lora_dir: Path) -> dict:
    """Base model and VAE from the config.yaml that `dreambooth train` wrote beside the weights, or {}."""
    return {k: str(v) for k, v in saved_settings(lora_dir).items() if k in ("model", "vae") and v}
