"""LoRA files of cloneofsimo/lora (`lora_weight.safetensors`, `lora_weight.text_encoder.pt`, ...) -> diffusers' layout.

That library stored no module names: tensor i belongs to the i-th Linear it injected, in the order it
walked the model. It walked `model.modules()` for ancestors named CrossAttention / Attention / GEGLU
(UNet) or CLIPAttention (text encoder) and took each ancestor's Linear children in registration order.
In the diffusers releases it was used with (0.11-0.14) the UNet registered `down_blocks`, `up_blocks`
and only then `mid_block` (assigned after `up_blocks` was created), and a transformer block registered
`attn1`, `ff`, `attn2`; CLIPAttention registers `k_proj`, `v_proj`, `q_proj`, `out_proj`. Hence the orders below.

Safetensors files hold `unet:<i>:up`, `unet:<i>:down` (and `text_encoder:<i>:...`), the scale folded into
`up`, and metadata naming the targets; `.pt` files hold a flat list [up0, down0, up1, down1, ...] at scale 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UsageError
from .adapter import find_module

SUPPORTED_TARGETS = {"unet": {"CrossAttention", "Attention", "GEGLU"}, "text_encoder": {"CLIPAttention"}}


def unet_order(unet) -> list[str]:
    """The UNet Linear layers in the order cloneofsimo/lora injected them."""
    order = []
    blocks = [f"down_blocks.{i}" for i in range(len(unet.down_blocks))]
    blocks += [f"up_blocks.{i}" for i in range(len(unet.up_blocks))] + ["mid_block"]
    for block_path in blocks:
        block = unet.get_submodule(block_path)
        for j, attention in enumerate(getattr(block, "attentions", None) or []):
            for k, tb in enumerate(attention.transformer_blocks):
                base = f"{block_path}.attentions.{j}.transformer_blocks.{k}"
                order += [f"{base}.attn1.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0")]
                order += [f"{base}.ff.net.0.proj"]
                if tb.attn2 is not None:
                    order += [f"{base}.attn2.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0")]
    return order


def text_encoder_order(text_encoder) -> list[str]:
    layers = text_encoder.config.num_hidden_layers
    return [
        f"text_model.encoder.layers.{i}.self_attn.{p}" for i in range(layers) for p in ("k_proj", "v_proj", "q_proj", "out_proj")
    ]


def is_cloneofsimo(path: Path) -> bool:
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return any(":" in k for k in f.keys())
        except Exception:
            return False
    return path.suffix.lower() in (".pt", ".pth")


def read_pairs(path: Path, component: str, allow_pickle: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(up, down), ...] for `component` in injection order."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            prefixes = {k.split(":")[0] for k in f.keys() if ":" in k}
            if component not in prefixes and prefixes and path.stem.endswith(".text_encoder"):
                component = prefixes.pop()  # a separate text-encoder file may name its one model anything
            keys = [k for k in f.keys() if k.startswith(f"{component}:")]
            if keys and meta.get(component):
                targets = set(json.loads(meta[component]))
                if not targets <= SUPPORTED_TARGETS[component]:
                    raise UsageError(
                        f"--lora {path}: {component} LoRA targets {sorted(targets)}; only the default targets "
                        f"({sorted(SUPPORTED_TARGETS[component])}) can be mapped to modules"
                    )
            return [(f.get_tensor(f"{component}:{i}:up"), f.get_tensor(f"{component}:{i}:down")) for i in range(len(keys) // 2)]
    if not allow_pickle:
        raise UsageError(
            f"--lora {path}: a .pt pickle can run code when read; pass --allow-pickle if you trust it "
            f"(it is then read with torch.load(weights_only=True))"
        )
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UsageError(f"--lora {path}: could not be read as a weights-only pickle ({type(e).__name__})") from None
    if not isinstance(weights, list) or len(weights) % 2 or not all(torch.is_tensor(w) for w in weights):
        raise UsageError(f"--lora {path}: not a cloneofsimo/lora list of [up, down, ...] tensors")
    return [(weights[i], weights[i + 1]) for i in range(0, len(weights), 2)]


def to_peft(pairs, order: list[str], component: str, model, path: Path) -> dict[str, torch.Tensor]:
    if len(pairs) != len(order):
        raise UsageError(
            f"--lora {path}: holds {len(pairs)} {component} LoRA layers but this model has {len(order)} "
            f"targets; pass the --model it was trained on"
        )
    out = {}
    for (up, down), module in zip(pairs, order):
        layer = find_module(model, module)
        if (down.shape[1], up.shape[0]) != (layer.in_features, layer.out_features):
            raise UsageError(
                f"--lora {path}: layer {module} is {down.shape[1]}->{up.shape[0]} in the file but "
                f"{layer.in_features}->{layer.out_features} in this model; pass the --model it was trained on"
            )
        out[f"{component}.{module}.lora_A.weight"] = down.float()
        out[f"{component}.{module}.lora_B.weight"] = up.float()
    return out


def text_encoder_file(path: Path) -> Path | None:
    """`lora_weight.pt` -> `lora_weight.text_encoder.pt`, the file that script wrote beside it."""
    candidate = path.with_name(f"{path.stem}.text_encoder{path.suffix}")
    return candidate if candidate.is_file() else None


def convert(path: Path, pipe, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A cloneofsimo/lora file (and its text-encoder file, if beside it) as a peft-layout state dict."""
    state = {}
    unet_pairs = read_pairs(path, "unet", allow_pickle)
    state.update(to_peft(unet_pairs, unet_order(pipe.unet), "unet", pipe.unet, path))
    te_path = text_encoder_file(path)
    if te_path is None and path.suffix.lower() == ".safetensors":
        te_path = path
    if te_path is not None:
        te_pairs = read_pairs(te_path, "text_encoder", allow_pickle)
        if te_pairs:
            state.update(to_peft(te_pairs, text_encoder_order(pipe.text_encoder), "text_encoder", pipe.text_encoder, te_path))
    if not unet_pairs:
        raise UsageError(f"--lora {path}: holds no UNet LoRA layers")
    return state
