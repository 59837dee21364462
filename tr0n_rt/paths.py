"""Where shipped pipelines live: $TR0N_RT_ENGINES, else the repository's engines/ folder."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

DEFAULT_WORLD = "shapes"


def engines_dir() -> Path:
    return Path(os.environ.get("TR0N_RT_ENGINES") or Path(__file__).resolve().parent.parent / "engines")


def world_dir(name: str) -> Path:
    folder = engines_dir() / name
    if not folder.is_dir():
        known = sorted(p.name for p in engines_dir().glob("*") if (p / "pipeline.json").is_file())
        raise ConfigError(f"no world {name!r} in {engines_dir()} (found: {', '.join(known) or 'none'}); "
                          f"build it with `tr0n-rt train --world {name}` or pass --pipeline DIR")
    return folder
