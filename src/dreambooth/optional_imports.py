"""Optional packages that the field's libraries import whenever they are installed.

diffusers and peft import bitsandbytes at their own import when it is installed (about a second), and bitsandbytes
warns then about optional CPU kernels ("Failed to load CPU gemm_4bit_forward ..."): the first line a user saw of any
run, about nothing the run asked for. A command that will not use it (no 8-bit AdamW, no quantized base) hides it from
them for its process, before they are imported; they then take it as not installed, which is what they do on a
machine without it. Only the command line hides it: a process that runs several commands (the page, the Python API)
may need it later, so there its import-time warnings are only kept out of the output (`quiet`).
"""

from __future__ import annotations

import logging
import sys

BITSANDBYTES = "bitsandbytes"


def quiet() -> None:
    """bitsandbytes' import-time warnings out of the output; its errors still show."""
    logging.getLogger(BITSANDBYTES).setLevel(logging.ERROR)


def hide(name: str) -> None:
    """Hide `name` from every later import in this process (None in sys.modules: `import` raises ImportError and
    importlib.util.find_spec answers None, the libraries' own test of whether it is installed); one already imported
    stays as it is."""
    if sys.modules.get(name) is None:
        sys.modules[name] = None  # type: ignore[assignment]


def needs_bitsandbytes(command: str, cfg) -> bool:
    """Whether a command with this config may use bitsandbytes: a training with 8-bit AdamW or a bitsandbytes
    quantized base; any other command may (bench trains with its own settings; the page runs many)."""
    if command == "generate":
        return False
    if command != "train":
        return True
    return cfg.optimizer == "adamw8bit" or cfg.base_quantization in ("nf4", "int8")
