"""The digits world: sklearn's 8x8 digits at 32x32, a DCGAN generator, and class conditioning.

G: DCGAN, z in R^32 -> [1, 32, 32] in [-1, 1].  f: CNNClassifier (energy = cross-entropy of the
target class).  Judge: DigitsJudge, an independent classifier used only to score samples.
"""
from .build import WORLD_INFO, build_models, evaluate_models
from .judge import DigitsJudge

__all__ = ["WORLD_INFO", "build_models", "evaluate_models", "DigitsJudge"]
