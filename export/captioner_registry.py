"""Captioners by name: the explicit table that build_captioner reads (a new captioner is one import and
one entry here)."""
from __future__ import annotations

from tr0n_rt.errors import ConfigError, unknown_name

from .captioners import BlipCaptioner, Captioner
from .worlds.shapes.captioner import ShapesAttributeCaptioner

CAPTIONERS: dict[str, type[Captioner]] = {c.name: c for c in (BlipCaptioner, ShapesAttributeCaptioner)}


def build_captioner(name: str, config: dict | None = None, **runtime) -> Captioner:
    """The captioner listed as `name`, built from its config (constructor keyword arguments); `runtime`
    adds arguments that do not change the captions (e.g. device)."""
    if name not in CAPTIONERS:
        raise unknown_name("captioner", name, CAPTIONERS)
    try:
        return CAPTIONERS[name](**(config or {}), **runtime)
    except TypeError as e:  # a key the captioner does not take
        raise ConfigError(f"captioner {name!r} does not take the config {config} ({e})") from None
