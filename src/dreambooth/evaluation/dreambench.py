"""The DreamBench dataset layout (Ruiz et al. 2022): a folder per subject (`<subject>/*.jpg`) and
`prompts_and_classes.txt`, which lists each subject's class noun (a "Classes" CSV section) and the 25
evaluation prompts for objects and for live subjects (two python-list sections of
`'a {0} {1} in the jungle'.format(unique_token, class_token)` lines)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

PROMPTS_FILE = "prompts_and_classes.txt"
LIVE_CLASSES = frozenset({"dog", "cat"})  # the paper's live subjects are its dogs and cats
PROMPT_LINE = re.compile(r"""^\s*(['"])(.*)\1\s*\.format\(\s*unique_token\s*,\s*class_token\s*\)\s*,?\s*$""")


@dataclass
class Benchmark:
    classes: dict[str, str]  # subject -> class noun, in the file's order
    object_prompts: list[str]  # templates: {0} = identifier, {1} = class noun
    live_prompts: list[str]

    def is_live(self, subject: str) -> bool:
        return self.classes[subject] in LIVE_CLASSES

    def kind(self, subject: str) -> str:
        return "live" if self.is_live(subject) else "object"

    def prompts(self, subject: str, identifier: str) -> list[str]:
        """The subject's prompts verbatim from the file, identifier and class noun filled in."""
        templates = self.live_prompts if self.is_live(subject) else self.object_prompts
        return [fill(t, identifier, self.classes[subject]) for t in templates]


def fill(template: str, identifier: str, noun: str) -> str:
    # str.format would choke on any other brace in a prompt; only {0} and {1} are placeholders.
    return template.replace("{0}", identifier).replace("{1}", noun)


def parse(text: str, source: str = PROMPTS_FILE) -> Benchmark:
    classes: dict[str, str] = {}
    lists: dict[str, list[str]] = {"object": [], "live": []}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        heading = line.lower()
        if heading == "classes":
            section = "classes"
        elif heading == "object prompts":
            section = "object"
        elif heading == "live subject prompts":
            section = "live"
        elif heading == "prompts" or not line or line.startswith(("prompt_list", "]", "#")):
            continue
        elif section == "classes":
            name, _, noun = line.partition(",")
            if noun and name.strip() != "subject_name":
                classes[name.strip()] = noun.strip()
        elif section in lists:
            match = PROMPT_LINE.match(line)
            if match:
                lists[section].append(match.group(2))
    for what, found in (("Classes", classes), ("Object Prompts", lists["object"]), ("Live Subject Prompts", lists["live"])):
        if not found:
            raise UsageError(f"{source}: no '{what}' section found; is it DreamBench's prompts_and_classes.txt?")
    return Benchmark(classes, lists["object"], lists["live"])


def read(folder: str | Path) -> Benchmark:
    path = Path(folder).expanduser() / PROMPTS_FILE
    if not Path(folder).expanduser().is_dir():
        raise UsageError(f"--dataset {folder}: no such folder; pass the DreamBench folder (<subject>/*.jpg, {PROMPTS_FILE})")
    if not path.is_file():
        raise UsageError(f"--dataset {folder}: has no {PROMPTS_FILE}; pass the DreamBench folder")
    return parse(path.read_text(encoding="utf-8", errors="replace"), str(path))


def subjects_present(bench: Benchmark, folder: str | Path) -> list[str]:
    """Subjects of the classes list that have a photo folder here, in the file's order."""
    root = Path(folder).expanduser()
    return [s for s in bench.classes if (root / s).is_dir()]
