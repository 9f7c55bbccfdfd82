"""Several subjects in one LoRA (`--subjects FILE`): the file's entries, each subject's photos with its own prompt, and
which photos and class images belong to which subject (batches interleave the subjects; each subject's class half
comes from its own class prompt)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

KEYS = ("instance_dir", "instance_prompt", "class_prompt", "num_class_images")


@dataclass(frozen=True)
class Subject:
    instance_dir: str  # as a path: relative ones are read from the subjects file's folder
    instance_prompt: str  # with the subject's own identifier
    class_prompt: str = ""
    num_class_images: int = 0  # 0: --num-class-images


def read_subjects(path: str, prior: bool, default_class_images: int) -> list[Subject]:
    """The entries of a subjects file (a YAML list of mappings with KEYS); a bad entry is one line naming it."""
    import yaml

    where = f"--subjects {path}"
    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(f"{where}: no such file; pass a YAML list of subjects (instance_dir, instance_prompt, class_prompt)")
    try:
        entries = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UsageError(f"{where}: not readable YAML ({type(e).__name__}); write a list of subjects") from None
    if not isinstance(entries, list) or len(entries) < 2:
        raise UsageError(
            f"{where}: must be a YAML list of at least two subjects (for one, use --instance-dir and --instance-prompt)"
        )
    subjects: list[Subject] = []
    for n, entry in enumerate(entries, 1):
        at = f"{where}: subject {n}"
        if not isinstance(entry, dict):
            raise UsageError(f"{at}: is not a mapping; give instance_dir, instance_prompt and class_prompt")
        unknown = sorted(set(map(str, entry)) - set(KEYS))
        if unknown:
            raise UsageError(f"{at}: unknown key {unknown[0]!r}; the keys are {', '.join(KEYS)}")
        for key in ("instance_dir", "instance_prompt") + (("class_prompt",) if prior else ()):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise UsageError(
                    f"{at}: {key} is missing or empty" + (" (needed with prior preservation)" if key == "class_prompt" else "")
                )
        count = entry.get("num_class_images", default_class_images)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise UsageError(f"{at}: num_class_images {count!r} must be a whole number of at least 1")
        folder = Path(entry["instance_dir"]).expanduser()
        folder = folder if folder.is_absolute() else file.parent / folder
        if not folder.is_dir():
            raise UsageError(
                f"{at}: instance_dir {entry['instance_dir']} is not a folder (relative paths are read from the file's folder)"
            )
        subject = Subject(str(folder), entry["instance_prompt"].strip(), str(entry.get("class_prompt") or "").strip(), count)
        if any(s.instance_prompt == subject.instance_prompt for s in subjects):
            raise UsageError(
                f"{at}: instance_prompt {subject.instance_prompt!r} is another subject's too; give each its own identifier"
            )
        subjects.append(subject)
    return subjects


def subject_photos(subjects: list[Subject], masks: bool) -> tuple[list, list[list[int]]]:
    """Every subject's photos in one list, each captioned with its subject's prompt (a photo's own .txt caption is
    kept), and the indices of each subject's photos in it."""
    from .photos import load_folder

    photos: list = []
    groups: list[list[int]] = []
    for n, subject in enumerate(subjects, 1):
        found = load_folder(subject.instance_dir, f"--subjects subject {n}: instance_dir", masks=masks)
        groups.append(list(range(len(photos), len(photos) + len(found))))
        photos += [dataclasses.replace(p, caption=p.caption or subject.instance_prompt) for p in found]
    return photos, groups


def class_groups(subjects: list[Subject], classes: list) -> list[list[int]]:
    """For each subject, the indices of the class images drawn from its class prompt (their caption)."""
    return [[i for i, photo in enumerate(classes) if photo.caption == s.class_prompt] for s in subjects]
