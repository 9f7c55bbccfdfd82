"""Many subjects' runs on Ray: `plan` (the fleet file -> one `train` config per subject, and the class-bank tasks they
wait on), `run` (what one task does in its worker), `report` (fleet.json, fleet.html), `driver` (Ray: start or join,
place, retry, follow). Ray is imported in `driver` alone, and only when a fleet runs: the tool works without it."""

from __future__ import annotations

from pathlib import Path

from ..config import FleetConfig


def fleet(cfg: FleetConfig) -> Path:
    """Train every subject of `cfg.fleet` on Ray; return the output folder (see driver.fleet)."""
    from .driver import fleet as run

    return run(cfg)
