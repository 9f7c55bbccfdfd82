import os
import shutil
from importlib import resources
from pathlib import Path

import pytest

# One torch thread per test process, set before torch is imported: the suite runs as one process per core (pytest-xdist),
# and a torch process whose OpenMP threads wait for a core another process holds runs many times slower
# (bench/RESULTS.md, "CPU threads"). The tool would choose one thread for its embedded models anyway; this covers the
# scoring models built in the tests and the torch code the tests call directly.
os.environ.setdefault("OMP_NUM_THREADS", "1")

SAMPLE = Path(str(resources.files("dreambooth") / "assets" / "sample_subject" / "dog"))


@pytest.fixture(autouse=True, scope="session")
def class_image_bank(tmp_path_factory):
    """Tests keep the shared class-image bank out of the user's cache."""
    os.environ["DREAMBOOTH_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def photos(tmp_path) -> Path:
    """A copy of the bundled subject's photos."""
    dst = tmp_path / "photos"
    shutil.copytree(SAMPLE, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """The tiny model saved as a local diffusers folder, as a user's downloaded model would be."""
    from dreambooth.families.sd import build_tiny as build_tiny_pipeline

    path = tmp_path_factory.mktemp("models") / "tiny-sd"
    build_tiny_pipeline().save_pretrained(path)
    return path


# The files that take longest, longest first (seconds of the full suite on 2 cores, 2026-12-07, a run of 795 s): the
# workers take whole files in this order, so the last files handed out are short ones and the workers end together.
LONGEST_FIRST = (
    "test_world_demo.py",  # 527: a whole demo; it takes both cores once the rest is done
    "test_world_no_prior.py",  # 67: beside the demo's test, on the other process
    "test_ui.py",  # 347
    "test_loop.py",  # 94
    "test_checkpoint.py",  # 76
    "test_multiprocess.py",  # 75
    "test_fleet.py",  # 71: a local Ray, its workers' imports and seven short trainings
    "test_identifier_prior.py",  # 59: the world's identifier measure
    "test_method_runs.py",  # 40
    "test_lora_files.py",  # 31
    "test_cli.py",  # 31 with its new-process runs
    "test_lycoris.py",  # 24
    "test_resume.py",  # 23
    "test_export.py",  # 21
    "test_validation.py",  # 19
    "test_placement.py",  # 17
    "test_world_pretrain.py",  # 16
    "test_bench.py",  # 16
    "test_subjects.py",  # 15
)


def pytest_collection_modifyitems(items):
    order = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: order.get(item.fspath.basename, len(order)))
