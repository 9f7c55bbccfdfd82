"""`dreambooth ui`: a web page (Gradio) over the same train / generate / evaluate functions as the command line.

Installed with the `ui` extra; the modules that hold no page code (uploads, jobs, runs) import without it."""

from collections.abc import Sequence


def serve(
    host: str = "127.0.0.1",
    port: int = 7860,
    workspace: str = "dreambooth-workspace",
    auth: str = "",
    no_auth: bool = False,
    photo_roots: Sequence[str] = (),
) -> None:
    from .server import serve as _serve

    _serve(host, port, workspace, auth, no_auth, photo_roots)
