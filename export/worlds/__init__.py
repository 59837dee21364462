"""The embedded worlds: small models tr0n-rt trains itself, so TR0N can be seen working on a CPU.

Each world package provides build_models(out_dir, seed, progress) -> parts (see build.py),
WORLD_INFO (name, condition, translator training settings) and a judge class.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from tr0n_rt.errors import unknown_name

from .digits.judge import DigitsJudge
from .shapes.judge import ShapesJudge

WORLDS = ("shapes", "digits")
JUDGES = {c.family: c for c in (ShapesJudge, DigitsJudge)}


def world_module(name: str):
    if name not in WORLDS:
        raise unknown_name("world", name, WORLDS)
    return importlib.import_module(f"{__name__}.{name}")


def judge_from_spec(spec: dict, folder: Path):
    """The judge named by a pipeline's `judge` field, loaded from folder."""
    family = spec.get("family")
    if family not in JUDGES:
        raise unknown_name("judge family", str(family), JUDGES)
    return JUDGES[family].load(spec, Path(folder))
