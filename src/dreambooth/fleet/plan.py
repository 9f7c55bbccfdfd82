"""A fleet file -> one `train` config per subject, built by the same code as `train --config`, and the class-bank
tasks those subjects wait on. Plain functions: nothing here needs Ray.

    defaults:            # any `train` setting, for every subject
      model: tiny
      max_steps: 300
    subjects:
      - name: dog        # OUT/dog/
        instance_dir: photos/dog
        instance_prompt: a photo of sks dog
        max_steps: 400   # any `train` setting again, for this subject alone
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import fields as F
from ..config import PriorMode, TrainConfig, check_train
from ..errors import UsageError
from ..lora.files import WEIGHT_NAME

# What the fleet decides for each run: where it writes, whether it continues, its CPU threads.
OWNED = {
    "output_dir": "the fleet writes OUT/<name>/",
    "resume": "the fleet continues a started run by itself",
    "overwrite": "the fleet never moves a run aside; delete OUT/<name>/ to start it over",
    "threads": "set by --cpus-per-run",
}
# Settings that name files: made absolute against the folder the command runs in (as `train --config` reads them), so a
# worker started elsewhere finds them.
PATHS = ("instance_dir", "class_dir", "class_prompts_file", "validation_prompts", "subjects")
MAYBE_PATHS = ("model", "vae", "dino_model", "clip_model")  # a hub id or an embedded name unless the path exists
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
CHECKPOINTS_PER_RUN = 10  # a run leaves no setting for checkpoints: one every tenth, so a dead worker loses little


@dataclass
class Subject:
    name: str
    cfg: TrainConfig | None  # None when its settings are refused (`error`)
    error: str = ""
    bank: str = ""  # the class-bank task it waits on ("" when none)


@dataclass
class Bank:
    """One entry of the class-image bank that several subjects may share, made by one task before them."""

    key: str
    cfg: TrainConfig  # a subject's settings asking for the most class images any of its subjects needs
    subjects: list[str] = field(default_factory=list)


@dataclass
class Plan:
    subjects: list[Subject]
    banks: list[Bank]


def read_fleet(path: str) -> tuple[dict, list[dict]]:
    """The fleet file's `defaults` and `subjects` (each a mapping with a unique `name`); the file's own faults are
    one-line errors naming it."""
    data = F.read_yaml(path, flag="FLEET")
    unknown = [k for k in data if k not in ("defaults", "subjects")]
    if unknown:
        raise UsageError(f"FLEET {path}: unknown key '{unknown[0]}'; the file holds `defaults` and `subjects`")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise UsageError(f"FLEET {path}: `defaults` must be a mapping of `train` settings, e.g. `max_steps: 300`")
    subjects = data.get("subjects")
    if not isinstance(subjects, list) or not subjects:
        raise UsageError(f"FLEET {path}: `subjects` must be a list of subjects, each with a name and its settings")
    seen: set[str] = set()
    for i, entry in enumerate(subjects):
        if not isinstance(entry, dict) or "name" not in entry:
            raise UsageError(f"FLEET {path}: subject {i + 1} must be a mapping with a `name` (its folder under the output)")
        name = str(entry["name"])
        if not NAME.match(name) or name in ("checkpoints", "class-banks"):
            raise UsageError(f"FLEET {path}: subject name {name!r}: use letters, digits, '.', '_' or '-' (a folder name)")
        if name in seen:
            raise UsageError(f"FLEET {path}: subject name {name!r} appears twice; names must differ (each is a folder)")
        seen.add(name)
    return defaults, subjects


def owned_keys(values: dict, source: str) -> None:
    """Refuse the settings the fleet decides, in any spelling."""
    by_name = {n: f.name for f in F.fields_of(TrainConfig) for n in F.all_names(f)}
    for key in values:
        owner = by_name.get(str(key))
        if owner in OWNED:
            raise UsageError(f"{source}: '{key}' is not a fleet setting ({OWNED[owner]}); remove it")


def absolute(values: dict) -> dict:
    out = dict(values)
    for name in PATHS:
        if out.get(name):
            out[name] = str(Path(str(out[name])).expanduser().resolve())
    for name in MAYBE_PATHS:
        if out.get(name) and Path(str(out[name])).expanduser().exists():
            out[name] = str(Path(str(out[name])).expanduser().resolve())
    return out


def subject_config(defaults: dict, entry: dict, out: Path, threads: int, source: str) -> TrainConfig:
    """One subject's `train` config: the model's recommended settings <- `defaults` <- the subject's own (checked
    values, in any spelling `train --config` takes); its output OUT/<name>/ and its CPU threads set by the fleet."""
    values = {k: v for k, v in entry.items() if k != "name"}
    owned_keys(values, source)
    parsed = {**F.parse(TrainConfig, defaults), **F.parse(TrainConfig, values, source=source)}
    parsed = absolute(parsed)
    cfg = F.settings(TrainConfig, **parsed, output_dir=str(out / str(entry["name"])), threads=threads)
    if not cfg.checkpoint_every:
        cfg = dataclasses.replace(cfg, checkpoint_every=max(1, math.ceil(cfg.max_steps / CHECKPOINTS_PER_RUN)))
    try:
        check_train(cfg)
    except UsageError as e:
        raise UsageError(f"{source}: {e}") from None
    return cfg


def bank_key(cfg: TrainConfig) -> str:
    """What decides the class images a run draws (the bank's key, training/class_images.bank_dir, and the folder it
    asks for); "" when the run draws none or draws them itself (--subjects, a quantized base)."""
    if cfg.prior() is not PriorMode.GENERATED or cfg.subjects or cfg.base_quantization != "none":
        return ""  # a quantized base draws its class images quantized, as only its own run sets it up
    key = [cfg.model, cfg.vae, cfg.class_prompt, cfg.class_prompts_file, cfg.class_dir, cfg.resolution,
           cfg.class_image_steps, cfg.guidance_scale, cfg.seed, cfg.base_quantization]  # fmt: skip
    return json.dumps(key)


def banks(subjects: list[Subject]) -> list[Bank]:
    """One bank task per distinct key, asking for the most class images any of its subjects needs (a bank folder grows
    to what is asked and the first N are always the same images)."""
    found: dict[str, Bank] = {}
    for s in subjects:
        if s.cfg is None or not s.bank:
            continue
        bank = found.setdefault(s.bank, Bank(s.bank, s.cfg))
        bank.subjects.append(s.name)
        if s.cfg.num_class_images > bank.cfg.num_class_images:
            bank.cfg = s.cfg
    return list(found.values())


def plan(path: str, out: Path, threads: int) -> Plan:
    """Every subject of the fleet file with its config, or the one-line error that refused it; a fault of the file
    itself or of its `defaults` refuses the whole fleet (a UsageError)."""
    defaults, entries = read_fleet(path)
    owned_keys(defaults, f"FLEET {path}: defaults")
    F.parse(TrainConfig, defaults, source=f"FLEET {path}: defaults")  # the shared settings' faults refuse everything
    subjects = []
    for entry in entries:
        name = str(entry["name"])
        try:
            cfg = subject_config(defaults, entry, out, threads, f"FLEET {path}: subject {name}")
        except UsageError as e:
            subjects.append(Subject(name, None, str(e)))
            continue
        subjects.append(Subject(name, cfg, bank=bank_key(cfg)))
    return Plan(subjects, banks(subjects))


def finished(cfg: TrainConfig) -> bool:
    """The run's LoRA is there and was trained with these settings (its config.yaml): nothing to do."""
    from ..evaluation.bench import differences

    out = Path(cfg.output_dir)
    return (out / WEIGHT_NAME).is_file() and not differences(F.saved_settings(out), cfg)


def started(cfg: TrainConfig) -> bool:
    """The run left checkpoints (or a LoRA of other settings): the fleet continues it with train's --resume."""
    out = Path(cfg.output_dir)
    return any((out / "checkpoints").glob("step-*")) or (out / WEIGHT_NAME).is_file()
