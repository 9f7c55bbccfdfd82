import shutil
from importlib import resources
from pathlib import Path

import pytest

SAMPLE = Path(str(resources.files("dreambooth") / "assets" / "sample_subject" / "dog"))


@pytest.fixture(autouse=True, scope="session")
def class_image_bank(tmp_path_factory):
    """Tests keep the shared class-image bank out of the user's cache."""
    import os

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


def pytest_collection_modifyitems(items):
    """The web page's tests run last: after their training threads, torch work in the main thread ran at half speed
    on 2 cores (the world's demo test took 354 s after them, 177 s before them)."""
    items.sort(key=lambda item: item.fspath.basename == "test_ui.py")
