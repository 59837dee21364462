"""Where shipped pipelines live: $TR0N_RT_ENGINES, else the worlds a wheel ships inside the package
(tr0n_rt/engines), else the source checkout's engines/ folder (an editable install)."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

DEFAULT_WORLD = "shapes"


def engines_dir() -> Path:
    if os.environ.get("TR0N_RT_ENGINES"):
        return Path(os.environ["TR0N_RT_ENGINES"])
    here = Path(__file__).resolve().parent
    return here / "engines" if (here / "engines").is_dir() else here.parent / "engines"


def inside_installed_package(folder) -> bool:
    """True for a folder inside an installed tr0n-rt (a wheel's tr0n_rt/engines): tools never write there."""
    package = Path(__file__).resolve().parent
    return package in Path(folder).resolve().parents


def is_world_name(text: str) -> bool:
    """A bare name (no path separator, not "." or ".."): it names a shipped world, never a folder in the
    working directory (write ./NAME for that)."""
    return "/" not in text and os.sep not in text and text not in (".", "..")


def pipeline_path(pipeline) -> Path:
    """A world's bare name ("shapes") -> its folder; anything else -> that path."""
    return world_dir(pipeline) if isinstance(pipeline, str) and is_world_name(pipeline) else Path(pipeline)


def world_dir(name: str) -> Path:
    folder = engines_dir() / name
    if not folder.is_dir():
        known = sorted(p.name for p in engines_dir().glob("*") if (p / "pipeline.json").is_file())
        raise ConfigError(f"no world {name!r} in {engines_dir()} (found: {', '.join(known) or 'none'}); for a "
                          f"folder of that name write ./{name} (or pass --pipeline DIR)")
    return folder
