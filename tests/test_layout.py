"""The house rules, checked: no import cycles, family knowledge only in families/, and a README whose architecture
section names every module of the tree."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "src" / "dreambooth"


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: dict) -> set[str]:
    """Modules of the package that `name` imports, at module level or inside functions."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = (
                ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".") if node.level else node.module
            )
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != name}


def test_no_import_cycles():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    done, on_path = set(), []

    def visit(name):
        if name in on_path:
            raise AssertionError("import cycle: " + " -> ".join(on_path[on_path.index(name) :] + [name]))
        if name in done:
            return
        on_path.append(name)
        for other in sorted(graph[name]):
            visit(other)
        on_path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_only_families_know_which_family_a_model_is():
    family_words = re.compile(r"text_encoder_2|tokenizer_2|StableDiffusionXLPipeline|added_cond_kwargs|time_ids")
    leaks = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "families" not in path.parts and family_words.search(path.read_text())
    ]
    assert leaks == []


def test_the_readme_architecture_section_names_every_module():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Architecture") : readme.index("\n## ", readme.index("## Architecture") + 1)]
    missing = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py" and f"`{path.name}`" not in section and f"`{path.parent.name}/{path.name}`" not in section
    ]
    folders = {p.parent.name for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE}
    assert missing == [] and all(f"`{folder}/`" in section for folder in folders)


LOWER_FLOORS = ("families", "objectives", "lora", "training", "evaluation", "world")


def test_ray_is_imported_in_the_fleet_alone_and_no_lower_floor_imports_the_fleet():
    known = modules()
    ray_users, upward = [], []
    for name, path in known.items():
        tree = ast.parse(path.read_text())
        found = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        found |= {
            (node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.level
        }
        if "ray" in found and not name.startswith("dreambooth.fleet"):
            ray_users.append(name)
        floor = name.split(".")[1] if name.count(".") else ""
        if floor in LOWER_FLOORS and any(m.startswith("dreambooth.fleet") for m in imports(name, path, known)):
            upward.append(name)
    assert ray_users == [] and upward == []


def test_methods_sit_below_training():
    """methods/ says what trains and when, and adds the new tokens; the training loop asks it. It reaches nothing above
    it: not training/, generation, evaluation/, world/ or ui/."""
    known = modules()
    above = ("dreambooth.training", "dreambooth.generation", "dreambooth.evaluation", "dreambooth.world", "dreambooth.ui")
    reached = {
        f"{name} -> {other}"
        for name, path in known.items()
        if name.startswith("dreambooth.methods")
        for other in imports(name, path, known)
        if other.startswith(above)
    }
    assert reached == set()
