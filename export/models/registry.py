"""Name -> class tables, so a JSON config (family + config + weights) rebuilds any model. Explicit, as
open_clip's factory tables are: a new family is one import and one entry here."""
from __future__ import annotations

from tr0n_rt.errors import unknown_name

from ..worlds.shapes.renderer import ShapesRenderer
from .biggan import BigGANDeepGenerator, BigGANGenerator
from .classifier import CNNClassifier
from .clip import OpenClipModel
from .dcgan import DCGANGenerator
from .stylegan2 import StyleGAN2Generator

GENERATORS: dict[str, type] = {c.family: c for c in (
    DCGANGenerator, StyleGAN2Generator, BigGANGenerator, BigGANDeepGenerator, ShapesRenderer)}
CONDITION_MODELS: dict[str, type] = {c.family: c for c in (OpenClipModel, CNNClassifier)}


def build_generator(family: str, config: dict):
    if family not in GENERATORS:
        raise unknown_name("generator family", family, GENERATORS)
    return GENERATORS[family](**config)


def build_condition_model(family: str, config: dict):
    if family not in CONDITION_MODELS:
        raise unknown_name("condition model family", family, CONDITION_MODELS)
    return CONDITION_MODELS[family](**config)
