"""`dreambooth export`: a trained LoRA (or an old cloneofsimo/lora file) in another layout, checked by
reading it back through diffusers' own loader: every weight unchanged, and in the kohya layout every alpha."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import torch

from .. import atomic
from ..config import ExportConfig, check_export
from ..errors import UsageError
from ..families import family_of
from ..models import describe, load_pipeline
from .files import KOHYA_NAME, WEIGHT_NAME, find_weights, native_tensors, read_lora, released_path, stored_alphas, training_config
from .kohya import export_in_force, from_kohya, split_key, to_kohya, with_alphas
from .lycoris import is_lycoris


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
) -> str:
    """Every tensor must come back, unchanged, through diffusers' non-diffusers LoRA loader, and with `alphas`
    ((component, module) -> alpha) every module's alpha too. Where diffusers' reader folds each alpha into the weights
    (FLUX.1's), the update every module applies must come back instead; where it cannot read the model's sizes, the
    file is read back by `from_kohya`. Returns who read it back."""
    family = family_of(pipe)
    denoiser = getattr(pipe, family.denoiser)
    if alphas is not None and not family.diffusers_reads_kohya(denoiser.config):
        from safetensors.torch import load_file

        state, got_alphas = from_kohya(load_file(str(written)), family, pipe)
        check_updates(written, normalised(state), normalised(expected), got_alphas, alphas)
        return f"this tool (diffusers reads {family.title} kohya files at the released model's sizes only)"
    state, network_alphas = read_with_diffusers(pipe, written, denoiser.config)
    if alphas is not None and network_alphas is None:
        check_updates(written, normalised(state), normalised(expected), None, alphas)
        return "diffusers"
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
    return "diffusers"


def read_with_diffusers(pipe, written: Path, denoiser_config) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state, alphas) as the pipeline's own LoRA loader reads the file; alphas None where the reader returns none
    (it folded them into the weights)."""
    reader = type(pipe).lora_state_dict
    if "return_alphas" in inspect.signature(reader).parameters:
        state, alphas = reader(str(written), return_alphas=True)
        return state, alphas
    read = reader(str(written), unet_config=denoiser_config)
    # a reader that folds each alpha into the weights may return the state alone (Qwen-Image's)
    return read if isinstance(read, tuple) else (read, None)


def check_updates(
    written: Path,
    got: dict[tuple[str, str, str], torch.Tensor],
    want: dict[tuple[str, str, str], torch.Tensor],
    got_alphas: dict[tuple[str, str], float] | None,
    want_alphas: dict[tuple[str, str], float],
) -> None:
    """Each module's update (alpha / rank) · up · down, applied to a fixed random input, must come back (to float
    rounding): layers are split and scales folded on the way. A module that came back without being written must
    apply nothing (the untrained parts of a fused layer)."""
    modules = lambda state: {(c, m) for c, m, _ in state}  # noqa: E731
    missing = sorted(modules(want) - modules(got))
    if missing:
        raise UsageError(
            f"export check failed: {len(missing)} modules lost when {written} is read back "
            f"(e.g. {'.'.join(missing[0])}); the file was not kept"
        )

    def update(state, alphas, c, m):
        down, up = state[(c, m, "down")].double(), state[(c, m, "up")].double()
        alpha = {(ac, am.removeprefix("text_model.")): v for (ac, am), v in alphas.items()}[(c, m)] if alphas else None
        scale = alpha / down.shape[0] if alpha is not None else 1.0
        probe = torch.randn(down.shape[1], 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        return scale * (up @ (down @ probe))

    for c, m in sorted(modules(got)):
        came_back = update(got, got_alphas, c, m)
        written_update = update(want, want_alphas, c, m) if (c, m) in modules(want) else torch.zeros_like(came_back)
        if not torch.allclose(came_back, written_update, rtol=1e-5, atol=1e-6 * float(written_update.abs().max())):
            raise UsageError(f"export check failed: {c}.{m} applies another update when read back; the file was not kept")


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
    if is_lycoris(state):
        return export_lycoris(pipe, base, path, state, meta, fmt, output)
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
        reader = check_round_trip(tmp, pipe, expected, alphas)
        atomic.write_bytes(out, tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
    print(f"{fmt} LoRA ({len(tensors)} tensors, every one read back by {reader}) -> {out}", flush=True)
    if fmt == "kohya" and base.family.embeddings_elsewhere:
        bundle_embeddings(out, path.parent)
    return out


def bundle_embeddings(kohya_file: Path, run: Path) -> None:
    """A pivotal-tuning run's new tokens, bundled into its kohya file as A1111 / Forge read them (after the LoRA's own
    check: diffusers' reader of the layout takes LoRA keys only)."""
    from ..methods import embeddings

    found = embeddings.find(run)
    if found is None:
        return
    vectors, _ = embeddings.read(found)
    per_subject = [re.findall(r"<[^<>]+>", part) for part in embeddings.header_tokens(found).split("|")]
    embeddings.bundle(kohya_file, vectors, per_subject, run)
    print(f"the new tokens of {found.name} bundled into {kohya_file.name}", flush=True)


def export_lycoris(pipe, base, path: Path, state: dict[str, torch.Tensor], meta: dict[str, str], fmt: str, output: str) -> Path:
    """A LoKr / LoHa in LyCORIS' kohya-style layout, kept only when this tool's reader of that layout gives back every
    module's update (the factors under this model's names and the scale LyCORIS applies) as trained."""
    from .kohya import to_kohya_lycoris
    from .lycoris import configs_in_header

    if fmt != "kohya":
        raise UsageError(
            f"--format {fmt}: {path} is a LoKr / LoHa, whose diffusers-side file is the one `train` wrote; pass --format kohya"
        )
    if any(k.startswith("lora_") for k in state):
        raise UsageError(f"--lora {path}: is already in the kohya layout; pass the pytorch_lora_weights.safetensors of the run")
    out = Path(output) if output else path.parent / KOHYA_NAME
    if out.is_dir():
        raise UsageError(f"--output {out}: is a folder; pass a .safetensors file path")
    configs = configs_in_header(meta)
    denoiser = getattr(pipe, base.family.denoiser)
    tensors, header = to_kohya_lycoris(state, configs, meta, base.family, base.version, denoiser.config)
    from safetensors.torch import save

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.check.safetensors")
    try:
        tmp.write_bytes(save(tensors, metadata=header))
        check_lycoris_round_trip(tmp, pipe, state, configs)
        atomic.write_bytes(out, tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
    print(f"kohya LyCORIS file ({len(tensors)} tensors, every module read back by this tool) -> {out}", flush=True)
    return out


def check_lycoris_round_trip(written: Path, pipe, expected: dict[str, torch.Tensor], configs: dict[str, dict]) -> None:
    """Read `written` back as `generate` reads it (`from_kohya_lycoris`): every module must come back with the same
    factors (but for a scale folded into a LoKr's first factor) and apply the same update, alpha / rank included."""
    from safetensors.torch import load_file

    from .kohya import from_kohya_lycoris
    from .lycoris import delta, modules_of, pattern_value

    family = family_of(pipe)
    got_state, got_configs = from_kohya_lycoris(load_file(str(written)), family, pipe)

    def by_module(state):
        return {(k.partition(".")[0], k.partition(".")[2].removeprefix("text_model.")): f for k, f in modules_of(state).items()}

    got, want = by_module(got_state), by_module(expected)
    if set(got) != set(want):
        example = sorted(set(got) ^ set(want))[0]
        raise UsageError(
            f"export check failed: {'.'.join(example)} lost or added when {written} is read back; the file was not kept"
        )
    spelled = {
        (k.partition(".")[0], k.partition(".")[2].removeprefix("text_model.")): k.partition(".")[2] for k in modules_of(got_state)
    }
    for (component, module), factors in want.items():
        back = got[(component, module)]
        if set(back) != set(factors):
            raise UsageError(f"export check failed: {component}.{module} came back with other factors; the file was not kept")
        for part, tensor in factors.items():
            if part != "lokr_w1" and not torch.equal(back[part], tensor):
                raise UsageError(
                    f"export check failed: {component}.{module}.{part} changed on the way back; the file was not kept"
                )
        wanted_config, got_config = configs[component], got_configs[component]
        scale = pattern_value(wanted_config, "alpha", module) / pattern_value(wanted_config, "r", module)
        names = [m for m in (module, "text_model." + module) if m in spelled.values()] or [spelled[(component, module)]]
        back_scale = pattern_value(got_config, "alpha", names[0]) / pattern_value(got_config, "r", names[0])
        applied, trained = delta(back, back_scale), delta(factors, scale)
        if not torch.allclose(applied, trained, rtol=1e-5, atol=1e-7 * float(trained.abs().max())):
            raise UsageError(
                f"export check failed: {component}.{module} applies another update when read back; the file was not kept"
            )


def base_model_of(path: Path) -> str:
    return training_config(path.parent).get("model", "") or read_header_base(path) or "tiny"


def read_header_base(path: Path) -> str:
    if path.suffix.lower() != ".safetensors":
        return ""
    try:
        return read_lora(path)[1].get("dreambooth.base_model", "")
    except UsageError:
        return ""
