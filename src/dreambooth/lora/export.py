"""`dreambooth export`: a trained LoRA (or an old cloneofsimo/lora file) in another layout, checked by
reading it back through diffusers' own loader: every weight unchanged, and in the kohya layout every alpha."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import atomic
from ..config import ExportConfig, check_export
from ..errors import UsageError
from ..families import family_of
from ..models import describe, load_pipeline
from .files import KOHYA_NAME, WEIGHT_NAME, find_weights, native_tensors, read_lora, released_path, stored_alphas, training_config
from .kohya import export_in_force, split_key, to_kohya, with_alphas


def normalised(state: dict[str, torch.Tensor]) -> dict[tuple[str, str, str], torch.Tensor]:
    """(component, module, down/up) -> tensor, whatever the key layout and CLIP prefix."""
    return {(c, m.removeprefix("text_model."), part): t for k, t in state.items() for c, m, part in [split_key(k)]}


def read_native(path: Path, pipe, allow_pickle: bool) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from . import cloneofsimo

    if cloneofsimo.is_cloneofsimo(path):
        return cloneofsimo.convert(path, pipe, allow_pickle), {}
    _, meta, state = read_lora(path)
    if state is None:
        from safetensors.torch import load_file

        state = load_file(str(path))
    return state, meta


def check_round_trip(
    written: Path, pipe, expected: dict[str, torch.Tensor], alphas: dict[tuple[str, str], float] | None = None
) -> None:
    """Every tensor must come back, unchanged, through diffusers' non-diffusers LoRA loader, and with `alphas`
    ((component, module) -> alpha) every module's alpha too."""
    denoiser = getattr(pipe, family_of(pipe).denoiser)
    state, network_alphas = type(pipe).lora_state_dict(str(written), unet_config=denoiser.config)
    got, want = normalised(state), normalised(expected)
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        example = (missing or extra)[0]
        raise UsageError(
            f"export check failed: {len(missing)} weights lost and {len(extra)} unexpected when diffusers "
            f"reads {written} (e.g. {'.'.join(example[:2])}); the file was not kept"
        )
    for key, tensor in want.items():
        if not torch.equal(got[key].to(tensor.dtype), tensor):
            raise UsageError(f"export check failed: {'.'.join(key[:2])} changed on the way through diffusers' loader")
    if alphas is not None:
        # diffusers names each alpha after the module's down weight: '<down key>.alpha'
        read = {(c, m): float(v) for k, v in (network_alphas or {}).items() for c, m, _ in [split_key(k.removesuffix(".alpha"))]}
        got_alphas = {(c, m.removeprefix("text_model.")): v for (c, m), v in read.items()}
        for (component, module), alpha in alphas.items():
            came_back = got_alphas.get((component, module.removeprefix("text_model.")))
            if came_back != torch.tensor(alpha).item():  # written as a float32 tensor
                raise UsageError(
                    f"export check failed: the alpha of {component}.{module} came back from diffusers' loader as "
                    f"{came_back} instead of {alpha}; the file was not kept"
                )


def export(cfg: ExportConfig) -> Path:
    check_export(cfg)
    path = find_weights(cfg.lora, cfg.allow_pickle)
    model = cfg.model or base_model_of(path)
    pipe = load_pipeline(model, allow_pickle=cfg.allow_pickle)
    return export_with(pipe, path, cfg.format, cfg.output, cfg.allow_pickle, model)


def export_with(pipe, path: Path, fmt: str, output: str = "", allow_pickle: bool = False, model: str = "") -> Path:
    """Write the LoRA at `path` in layout `fmt` for the base model `pipe` (whose UNet layout names the modules).

    kohya: module names as sd-scripts writes them, the weights as trained and each module's `.alpha`. diffusers: the
    native file as `train` writes it (released module names, alpha/rank in the up weights), from any file this tool
    reads, e.g. one of an earlier version whose header alone held alpha."""
    base = describe(pipe, model)
    if fmt == "kohya":
        export_in_force("kohya", base.family)  # one line, before anything is read, for a family without the layout
    state, meta = read_native(path, pipe, allow_pickle)
    if fmt == "kohya" and any(split_key(k)[2] == "magnitude" for k in state):
        raise UsageError(
            f"--format kohya: {path} is a DoRA LoRA, which this tool does not write in the kohya layout (its "
            f".dora_scale could not be checked through diffusers' loader); pass --format diffusers"
        )
    out = Path(output) if output else path.parent / (KOHYA_NAME if fmt == "kohya" else WEIGHT_NAME)
    if out.exists() and out.resolve() == path.resolve():
        raise UsageError(f"--output {out}: is the input file; pass another path")
    if out.is_dir():
        raise UsageError(f"--output {out}: is a folder; pass a .safetensors file path")
    alphas: dict[tuple[str, str], float] | None = None
    if fmt == "kohya":
        denoiser = getattr(pipe, base.family.denoiser)
        weights, alphas = with_alphas(state, meta)
        tensors, header = to_kohya(weights, alphas, meta, base.family, base.version, denoiser.config)
        expected = weights
    else:
        tensors = native_tensors(
            state, stored_alphas(meta), lambda component, module: released_path(getattr(pipe, component, None), module)
        )
        header = {k: v for k, v in meta.items() if k.startswith("dreambooth.")}
        header["format"] = "pt"
        expected = tensors
    from safetensors.torch import save

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.check.safetensors")
    try:
        tmp.write_bytes(save(tensors, metadata=header))
        check_round_trip(tmp, pipe, expected, alphas)
        atomic.write_bytes(out, tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
    print(f"{fmt} LoRA ({len(tensors)} tensors, every one read back by diffusers) -> {out}", flush=True)
    return out


def base_model_of(path: Path) -> str:
    return training_config(path.parent).get("model", "") or read_header_base(path) or "tiny"


def read_header_base(path: Path) -> str:
    if path.suffix.lower() != ".safetensors":
        return ""
    try:
        return read_lora(path)[1].get("dreambooth.base_model", "")
    except UsageError:
        return ""
