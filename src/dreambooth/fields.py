"""How a config field is declared (`opt`), spelled (flags, snake_case, aliases), checked and converted; configs
built from mappings, YAML files and an embedded model's recommended settings; the config.yaml written beside
every output, and read back."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import math
import typing
from dataclasses import field
from pathlib import Path

import yaml

from .errors import UsageError
from .models import recommended


def opt(
    default,
    help: str,
    aliases: tuple[str, ...] = (),
    choices: tuple | None = None,
    flag: str | None = None,
    switches: dict[str, object] | None = None,
):
    """A config field: its default, its help text, extra flag names, allowed values, and `switches`: older on/off
    flags that set it to one value (`--use-8bit-adam` is `--optimizer adamw8bit`; in YAML `use_8bit_adam: true`,
    while false sets nothing)."""
    if isinstance(default, enum.Enum):
        choices = tuple(m.value for m in type(default))
    meta = {"help": help, "aliases": aliases, "choices": choices, "flag": flag, "switches": switches or {}}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def fields_of(cls) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls))


def default_of(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


@functools.cache
def type_hints(cls) -> dict:
    # resolving a config's string annotations takes milliseconds a field, and every flag and key asks
    return typing.get_type_hints(cls)


def field_type(cls, f: dataclasses.Field):
    return type_hints(cls)[f.name]


def flag_name(f: dataclasses.Field | str) -> str:
    name = f if isinstance(f, str) else f.name
    return "--" + name.replace("_", "-")


def check_each(cfg, names: list[str], ok, rule: str) -> None:
    """Refuse the first of the fields `names` whose value fails `ok`, naming its flag and the `rule`."""
    for name in names:
        value = getattr(cfg, name)
        if not ok(value):
            raise UsageError(f"{flag_name(name)} {value}: {rule}")


def all_names(f: dataclasses.Field) -> list[str]:
    """Every spelling that refers to this field: kebab, snake, and its aliases."""
    names = [f.name.replace("_", "-"), f.name]
    for alias in f.metadata.get("aliases", ()):
        names += [alias, alias.replace("_", "-")]
    return list(dict.fromkeys(names))


def coerce(cls, f: dataclasses.Field, value, where: str):
    """Check and convert one value to the field's type; `where` names the flag or key in errors."""
    kind = field_type(cls, f)
    choices = f.metadata.get("choices") or ()
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        text = value.value if isinstance(value, enum.Enum) else str(value)
        if text not in choices:
            raise UsageError(f"{where}: {text!r} is not one of {', '.join(choices)}")
        return kind(text)
    out: object
    try:
        if kind is bool:
            if isinstance(value, bool):
                out = value
            elif str(value).lower() in ("true", "yes", "1", "on"):
                out = True
            elif str(value).lower() in ("false", "no", "0", "off"):
                out = False
            else:
                raise ValueError
        elif kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            out = int(value)
        elif kind is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
            if not math.isfinite(out):
                raise ValueError
        elif kind == list[str]:
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError
            out = list(value)
        else:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            out = str(value)
    except (TypeError, ValueError):
        name = getattr(kind, "__name__", str(kind))
        raise UsageError(f"{where}: {value!r} is not a valid {name}; fix the value") from None
    if choices and out not in choices:
        raise UsageError(f"{where}: {out!r} is not one of {', '.join(choices)}")
    return out


def switch_names(f: dataclasses.Field) -> dict[str, object]:
    """Each spelling of the field's switches (kebab and snake) -> the value it sets."""
    return {n: v for name, v in f.metadata.get("switches", {}).items() for n in (name.replace("_", "-"), name)}


def parse(cls, values: dict, source: str = "config") -> dict:
    """Checked values by field name, from a mapping whose keys may use any spelling of a field's name (or of a
    switch that sets it)."""
    lookup = {name: f for f in fields_of(cls) for name in all_names(f)}
    switched = {name: (f, v) for f in fields_of(cls) for name, v in switch_names(f).items()}
    kwargs = {}
    for key, value in values.items():
        if str(key) in switched:
            target, to = switched[str(key)]
            if coerce(_Switch, SWITCH, value, f"{source}: key '{key}'"):
                kwargs[target.name] = coerce(cls, target, to, f"{source}: key '{key}'")
            continue
        f = lookup.get(str(key))
        if f is None:
            close = difflib.get_close_matches(str(key), [*lookup, *switched], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UsageError(f"{source}: unknown key '{key}'{hint}; remove it or fix its name")
        kwargs[f.name] = coerce(cls, f, value, f"{source}: key '{key}'")
    return kwargs


@dataclasses.dataclass
class _Switch:
    on: bool = False


SWITCH = dataclasses.fields(_Switch)[0]  # how a switch's own value (true / false) is read


def from_dict(cls, values: dict, source: str = "config"):
    """A config from a mapping (any spelling of the names), over the defaults for its model."""
    return settings(cls, **parse(cls, values, source))


def settings(cls, **values):
    """defaults <- the embedded model's recommended settings <- `values`. What the CLI, YAML files and the bench
    build configs with; `TrainConfig(...)` alone takes the general defaults."""
    command = getattr(cls, "COMMAND", "")  # the command whose recommended settings an embedded model has
    if command not in ("train", "generate"):
        return cls(**values)
    model = values.get("model", "")
    if not model and values.get("lora"):  # generate's model defaults to the one the LoRA was trained on
        lora = Path(values["lora"]).expanduser()
        model = str(saved_settings(lora if lora.is_dir() else lora.parent).get("model", ""))
    chosen = {**recommended(model or cls().model, command), **values}
    # what a chosen setting implies for others the caller left alone (Prodigy's learning rates), over the model's
    implied = getattr(cls, "implied", None)
    return cls(**{**chosen, **(implied(values) if implied else {}), **values})


def read_yaml(path: str | Path, flag: str = "--config") -> dict:
    """A YAML mapping of settings; errors name `flag` and the file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"{flag} {path}: no such file; pass the path of a YAML file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where = getattr(e, "problem_mark", None)
        line = f" line {where.line + 1}" if where else ""
        raise UsageError(f"{flag} {path}:{line} is not valid YAML; fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{flag} {path}: expected a mapping of keys to values at the top level")
    return data


SAVED_NAME = "config.yaml"  # what train, generate and bench write beside their outputs


def saved_settings(folder: str | Path) -> dict:
    """The config.yaml a command wrote in `folder`, as a mapping; {} when it is missing or unreadable."""
    path = Path(folder) / SAVED_NAME
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def to_dict(cfg) -> dict:
    """The settings as plain values (modes as their names), as config.yaml holds them."""
    return {k: v.value if isinstance(v, enum.Enum) else v for k, v in dataclasses.asdict(cfg).items()}


def to_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)
