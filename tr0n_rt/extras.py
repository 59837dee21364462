"""Optional parts of the install, imported on demand: a missing one is named with the extra to install."""
from __future__ import annotations

import importlib

from .errors import Tr0nError


def build_time(module: str, what: str):
    """Imports a tr0n_rt.export module, or says which extra to install."""
    try:
        return importlib.import_module(f"tr0n_rt.export.{module}")
    except ImportError as e:
        raise Tr0nError(f"{what} needs the export extra ({e}): pip install 'tr0n-rt[export]'") from None


