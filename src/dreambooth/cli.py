"""The `dreambooth` command: flags and YAML -> one config dataclass -> one function call.

Flags are generated from the config dataclasses, so each field has its kebab-case flag, the same
name in snake_case, and the aliases its declaration lists (diffusers' and the notebook script's names).
"""

from __future__ import annotations

import argparse
import enum
import sys
from collections.abc import Callable

from . import config as C
from . import fields as F
from . import optional_imports
from .errors import TrainingError, UsageError


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        raise UsageError(f"{message}; see `{self.prog} --help`")


def add_config_flags(parser: argparse.ArgumentParser, cls) -> None:
    parser.add_argument("--config", help="YAML file with any of these settings; flags override it")
    for f in F.fields_of(cls):
        names = ["--" + n for n in F.all_names(f)]
        kind = F.field_type(cls, f)
        default = F.default_of(f)
        default = default.value if isinstance(default, enum.Enum) else default
        help_text = f"{f.metadata['help']} (default: {default!r})"
        if kind is bool:
            parser.add_argument(*names, dest=f.name, action="store_const", const=True, default=argparse.SUPPRESS, help=help_text)
            parser.add_argument(
                "--no-" + f.name.replace("_", "-"),
                dest=f.name,
                action="store_const",
                const=False,
                default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
            )
        elif kind == list[str]:
            parser.add_argument(*names, dest=f.name, nargs="+", default=argparse.SUPPRESS, help=help_text, metavar="NAME")
        else:
            for switch, value in f.metadata.get("switches", {}).items():
                spellings = dict.fromkeys(["--" + switch.replace("_", "-"), "--" + switch])
                parser.add_argument(*spellings, dest=f.name, action="store_const", const=value, default=argparse.SUPPRESS,
                                    help=f"the same as {F.flag_name(f)} {value}")  # fmt: skip
            choices = f.metadata.get("choices")
            parser.add_argument(
                *names,
                dest=f.name,
                default=argparse.SUPPRESS,
                help=help_text,
                # an empty choice is the default that means "decided for you"; it is not typed
                metavar="{" + ",".join(c for c in choices if c) + "}" if choices else f.name.upper(),
            )


def config_from_args(cls, args: argparse.Namespace):
    """defaults <- the embedded model's recommended settings <- YAML file <- flags."""
    values = vars(args).copy()
    yaml_path = values.pop("config", None)
    values.pop("command", None)
    from_file = F.parse(cls, F.read_yaml(yaml_path), source=f"--config {yaml_path}") if yaml_path else {}
    by_name = {f.name: f for f in F.fields_of(cls)}
    flags = {k: F.coerce(cls, by_name[k], v, F.flag_name(by_name[k])) for k, v in values.items() if k in by_name}
    return F.settings(cls, **{**from_file, **flags})


def build_parser() -> Parser:
    from .world import commands as world_commands

    parser = Parser(prog="dreambooth", description="Personalise a text-to-image model to one subject (DreamBooth + LoRA).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_config_flags(sub.add_parser("train", help="train a LoRA on a subject's photos"), C.TrainConfig)
    add_config_flags(sub.add_parser("generate", help="draw images with a trained LoRA"), C.GenerateConfig)
    add_config_flags(
        sub.add_parser("evaluate", help="score generated images against the real ones (DINO, CLIP-I, CLIP-T, PRES, DIV)"),
        C.EvaluateConfig,
    )
    bench = sub.add_parser("bench", help="train, generate and score every subject of a DreamBench-layout dataset")
    bench.add_argument(
        "dataset",
        nargs="?",
        default=argparse.SUPPRESS,
        metavar="DATASET_DIR",
        help="DreamBench-layout folder (same as --dataset)",
    )
    add_config_flags(bench, C.BenchConfig)
    add_config_flags(
        sub.add_parser("export", help="write a LoRA in the kohya (ComfyUI, A1111 / Forge) or diffusers layout"), C.ExportConfig
    )
    add_config_flags(
        sub.add_parser("identifier", help="list rare-token identifiers; show how a prompt tokenises"), C.IdentifierConfig
    )
    fleet = sub.add_parser(
        "fleet", help="train many subjects at once on Ray, one run per GPU or CPUs (needs: pip install 'dreambooth[fleet]')"
    )
    fleet.add_argument(
        "fleet", nargs="?", default=argparse.SUPPRESS, metavar="FLEET.yaml", help="the fleet file (same as --fleet)"
    )
    add_config_flags(fleet, C.FleetConfig)
    world_commands.add_parsers(sub, add_config_flags)
    ui = sub.add_parser("ui", help="serve a web page to train, generate and evaluate (needs: pip install 'dreambooth[ui]')")
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    ui.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    ui.add_argument(
        "--workspace",
        default="dreambooth-workspace",
        help="folder for uploads, runs, images and scores; any LoRA folder in it is listed (default: dreambooth-workspace)",
    )
    ui.add_argument(
        "--auth",
        default="",
        metavar="USER:PASSWORD",
        help="ask for this user and password (needed with a --host other machines reach)",
    )
    ui.add_argument(
        "--no-auth", action="store_true", help="serve a --host other machines reach without a password (anyone there can use it)"
    )
    ui.add_argument(
        "--photo-root",
        action="append",
        default=[],
        metavar="FOLDER",
        help="a folder whose photo folders the page may read (repeatable; the workspace always is)",
    )
    return parser


def run_identifier(cfg: C.IdentifierConfig) -> None:
    from .models import load_tokenizer
    from .training.identifier import candidates, tokenise

    C.check_identifier_config(cfg)
    tokenizer = load_tokenizer(cfg.model)
    if cfg.prompt:
        print(f"'{cfg.prompt}' ->")
        for word, tokens in tokenise(tokenizer, cfg.prompt):
            pieces = "  ".join(f"{t}({i})" for t, i in tokens)
            note = f"   <- {len(tokens)} tokens" if len(tokens) > 1 else ""
            print(f"  {word:<16} {pieces}{note}")
        print()
    if cfg.measure:
        measure_identifiers(cfg)
        return
    found = candidates(tokenizer, cfg.count, cfg.max_chars, cfg.min_id, cfg.seed)
    print(f"rare one-token identifiers (id >= {cfg.min_id}, <= {cfg.max_chars} letters, not English words):")
    for word, token_id in found:
        print(f"  {word:<6} {token_id}")


def measure_identifiers(cfg: C.IdentifierConfig) -> None:
    """`identifier --measure`: the table of measured priors; on the world model also how its base draws each word."""
    from .families import family_of
    from .models import load_pipeline
    from .training import identifier_prior as P
    from .world import MODEL as WORLD

    pipe = load_pipeline(cfg.model)
    draws = None
    if cfg.model == WORLD and cfg.samples:
        from .world.identifier_draws import measure_draws

        draws = measure_draws(pipe, cfg.samples)
    rows = P.measure(pipe, family_of(pipe), cfg.class_noun, cfg.count, cfg.seed, cfg.compare, draws)
    base, instance = P.prompts("a", cfg.class_noun)[1], P.prompts("X", cfg.class_noun)[0]
    print(f"measured priors on {cfg.model}, weakest first: shift = how far the text encoders move '{instance}' from "
          f"'{base}' (cosine distance of standardised embeddings)")  # fmt: skip
    if draws:
        print(f"as {cfg.class_noun} / same draw: share of {cfg.samples} samples the world's reader reads as a "
              f"{cfg.class_noun} / exactly as the same seed's sample of '{base}'")  # fmt: skip
    print(P.table(rows, cfg.class_noun))


def run_command(args: argparse.Namespace, whole_process: bool = False) -> None:
    """One command: its config from the flags (and YAML), then its function. `whole_process`: the process runs this
    command alone (the command line itself), so packages it will not use may be hidden from the libraries."""
    import dreambooth as api

    from .fleet import fleet

    commands: dict[str, tuple[type, Callable]] = {
        "train": (C.TrainConfig, api.train),
        "generate": (C.GenerateConfig, api.generate),
        "evaluate": (C.EvaluateConfig, api.evaluate),
        "bench": (C.BenchConfig, api.bench),
        "export": (C.ExportConfig, api.export),
        "fleet": (C.FleetConfig, fleet),
        "identifier": (C.IdentifierConfig, run_identifier),
    }
    if args.command in commands:
        cls, function = commands[args.command]
        cfg = config_from_args(cls, args)
        if whole_process and not optional_imports.needs_bitsandbytes(args.command, cfg):
            optional_imports.hide(optional_imports.BITSANDBYTES)
        function(cfg)
    elif args.command == "ui":
        from .ui import serve

        serve(args.host, args.port, args.workspace, args.auth, args.no_auth, args.photo_root)
    else:
        from .world import commands as world_commands

        world_commands.run(args, lambda cls: config_from_args(cls, args))


def main(argv: list[str] | None = None) -> int:
    """The command line: `argv` None reads the process's own (the `dreambooth` program); a list runs it in a process
    that may do more afterwards (tests, scripts)."""
    try:
        args = build_parser().parse_args(argv)
        run_command(args, whole_process=argv is None)
    except UsageError as e:
        print(f"dreambooth: error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"dreambooth: training stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dreambooth: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
