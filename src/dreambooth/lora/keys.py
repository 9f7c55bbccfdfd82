"""The key layouts of LoRA files this tool reads (peft's, diffusers', diffusers' older text-encoder one, DoRA's
magnitudes) and the per-component alphas of diffusers' header: what every reader and writer of files here parses."""

from __future__ import annotations

import json

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


def attention_processor_spelling(key: str) -> str:
    """A UNet key in diffusers' layout, with an attention projection spelled in the older attention-processor layout
    ('<block>.attn1.to_q.lora.down.weight' -> '<block>.attn1.processor.to_q_lora.down.weight', to_out.0 -> to_out):
    the one spelling of these modules that both ComfyUI (its key map for SD 1.x / SDXL UNets names attention
    projections only so) and diffusers (current and older, whose converter reads it) load. Other keys as they are."""
    for processor, module in PROCESSOR_KEYS.items():
        if not processor.startswith(".processor."):
            continue
        for ending in (".down.weight", ".up.weight"):
            plain = f"{module}{ending.removeprefix('.')}"  # '.to_q.lora.down.weight'
            if key.endswith(plain):
                return key.removesuffix(plain) + f"{processor}{ending.removeprefix('.')}"
    return key


# DoRA's learned magnitude of each adapted layer's weight, one value per output feature. peft writes it without
# `.weight`; files are written with it: diffusers then loads it into the denoiser and (through transformers 5) into
# the text encoders too, which drop the shorter spelling as an unexpected key.
MAGNITUDE = ".lora_magnitude_vector.weight"


def key_parts(key: str) -> tuple[str, str, str, str] | None:
    """'unet.<module>.lora.down.weight' (or another layout's) -> ('unet', '<module>', '.lora.down.weight', 'down');
    a DoRA magnitude -> (..., '.lora_magnitude_vector', 'magnitude'); None if unknown."""
    component, _, rest = key.partition(".")
    for old, new in PROCESSOR_KEYS.items():
        rest = rest.replace(old, new)
    for ending in (MAGNITUDE, MAGNITUDE.removesuffix(".weight")):
        if rest.endswith(ending):
            return component, rest[: -len(ending)], MAGNITUDE, "magnitude"
    for down, up in LAYOUTS:
        if rest.endswith(down):
            return component, rest[: -len(down)], down, "down"
        if rest.endswith(up):
            return component, rest[: -len(up)], up, "up"
    return None


def parse_key(key: str) -> tuple[str, str, str] | None:
    """'unet.<module>.lora.down.weight' (or another layout's) -> ('unet', '<module>', 'down'; 'up' or 'magnitude' for
    the others); None if unknown."""
    parts = key_parts(key)
    return None if parts is None else (parts[0], parts[1], parts[3])


def stored_alphas(meta: dict[str, str]) -> dict[str, float]:
    """Per-component alpha from diffusers' `lora_adapter_metadata` header entry (peft's config per component): what
    recent diffusers applies as alpha/rank on loading. Components it does not name apply their weights as they are."""
    try:
        adapter = json.loads(meta.get("lora_adapter_metadata", "{}"))
    except json.JSONDecodeError:
        adapter = {}
    if not isinstance(adapter, dict):
        return {}
    return {k[: -len(".lora_alpha")]: float(v) for k, v in adapter.items() if k.endswith(".lora_alpha") and v}
