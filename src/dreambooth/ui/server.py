"""`dreambooth ui`: check the flags, make the page, serve it."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
from collections.abc import Sequence
from pathlib import Path

from ..errors import UsageError, warn
from .uploads import MAX_BYTES, MAX_PHOTOS


def is_local(host: str) -> bool:
    """Whether only this machine can reach a server listening on `host` (a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, or "" (every address)


def parse_auth(text: str) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise UsageError("--auth: pass user:password, e.g. --auth me:a-long-passphrase")
    return user, password


def check_photo_roots(photo_roots: Sequence[str]) -> list[Path]:
    """The --photo-root folders, resolved: the folder field may read photos there (and in the workspace), nowhere else."""
    roots = []
    for folder in photo_roots:
        path = Path(folder).expanduser().resolve()
        if not path.is_dir():
            raise UsageError(f"--photo-root {folder}: no such folder; pass a folder of photos on this machine")
        roots.append(path)
    return roots


@contextlib.contextmanager
def stop_first(jobs):
    """While serving, Ctrl-C or a TERM signal (a service manager's stop) first stops the running job with a checkpoint,
    so the next server's Resume continues from the step it reached; gradio then closes as on Ctrl-C."""

    def handler(signum, frame):
        print("stopping: the running job saves a checkpoint first", flush=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C ends at once
        jobs.shutdown(timeout=60)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, was in previous.items():
            signal.signal(sig, was)


def serve(
    host: str = "127.0.0.1",
    port: int = 7860,
    workspace: str = "dreambooth-workspace",
    auth: str = "",
    no_auth: bool = False,
    photo_roots: Sequence[str] = (),
) -> None:
    credentials = parse_auth(auth)
    if credentials and no_auth:
        raise UsageError("--auth and --no-auth: pass one of them")
    if not 0 < port < 65536:
        raise UsageError(f"--port {port}: pass a port between 1 and 65535")
    if not is_local(host) and not credentials and not no_auth:
        # Open to the network, the page trains on the machine's CPU or GPU and serves the workspace to anyone.
        raise UsageError(
            f"--host {host}: the page would be reachable from other machines without a password; "
            "add --auth user:password (or --no-auth to serve it to anyone who reaches the port)"
        )
    roots = check_photo_roots(photo_roots)
    root = Path(workspace).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise UsageError(f"--workspace {workspace}: is a file; pass a folder")
    root.mkdir(parents=True, exist_ok=True)
    # Before gradio is imported: it reads these once. No usage reports leave the machine, and uploads
    # land in the workspace, not in the system's temporary folder.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("GRADIO_TEMP_DIR", str(root / ".cache" / "gradio"))
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UsageError("the web page needs its extra packages: pip install 'dreambooth[ui]'") from None
    if not is_local(host):
        if credentials:
            warn(f"--host {host}: the page is reachable from other machines; its password travels unencrypted over http")
        else:
            warn(f"--host {host} --no-auth: anyone who can reach this machine can use the page and read the workspace")
    from .app import CSS, build_app, theme
    from .jobs import Jobs

    jobs = Jobs(state_file=root / "jobs.json")  # the jobs of the server before this one, interrupted runs as stopped
    app = build_app(root, jobs, photo_roots=roots)
    app.queue(default_concurrency_limit=1)
    print(f"workspace {root}; at most {MAX_PHOTOS} photos of {MAX_BYTES // (1024 * 1024)} MB each per run", flush=True)
    with stop_first(jobs):
        app.launch(
            server_name=host,
            server_port=port,
            auth=credentials,
            share=False,
            inbrowser=False,
            show_error=True,
            allowed_paths=[str(root)],
            max_file_size=MAX_BYTES,
            footer_links=[],
            mcp_server=False,
            ssr_mode=False,
            theme=theme(),
            css=CSS,
        )
