"""Sampling hyperparameters and presets (torch-free: the runtime and the exporter share them).

`paper` is the reference code's setting for StyleGAN2/NVAE (github.com/layer6ai-labs/tr0n, text
evaluators): T = 100 steps, A = 50 augmentations, SGLD lr 0.1 with momentum 0.99 and noise std 0.01 on
the mixture means, Adam lr 5e-3 on the per-dimension mixture logits, gradient norms clipped to 1.
`fast` trades some quality for ~10x less compute: T = 25, A = 8.
"""
from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from .errors import ConfigError, unknown_name

MODES = ("mixture", "sample")
INT_FIELDS = {"steps": int, "copies": int}
FLOAT_FIELDS = ("latent_lr", "momentum", "noise_std", "logits_lr", "clip_norm", "adam_eps", "aesthetic_weight")
INITS = ("translator", "prior")


@dataclass(frozen=True)
class SamplingConfig:
    mode: str = "mixture"  # "mixture": refine all K means + logits (reference code); "sample": z0 ~ q(z|c), SGLD
    steps: int = 100  # T Langevin steps; 0 = translator only
    copies: int = 50  # A augmented copies per image in the energy; 0 = no augmentation
    latent_lr: float = 0.1  # SGLD step on the means (BigGAN: 5.0)
    momentum: float = 0.99  # SGLD momentum
    noise_std: float = 0.01  # SGLD noise added to the means after each step (not scaled by lr)
    logits_lr: float = 5e-3  # Adam on the mixture logits
    clip_norm: float = 1.0  # per-sample gradient norm clip, means and logits separately
    adam_eps: float = 1e-8  # Adam's epsilon (torch's default); an input, not a constant, of the step graph
    init: str = "translator"  # "prior": start Langevin from z ~ p(z) instead (the no-translator baseline)
    aesthetic_weight: float = 0.0  # alpha of the aesthetic term (pipelines with an aesthetic head only)

    def __post_init__(self):
        for f in fields(self):  # numbers as numbers: numpy scalars and ints for floats pass, "8" or 2.5 steps do not
            value, kind = getattr(self, f.name), INT_FIELDS.get(f.name, float if f.name in FLOAT_FIELDS else None)
            if kind is None:
                continue
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or (
                    kind is int and not isinstance(value, numbers.Integral)) or not np.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite {'whole number' if kind is int else 'number'}, "
                                  f"got {value!r}")
            object.__setattr__(self, f.name, kind(value))
        if self.mode not in MODES:
            raise ConfigError(f"unknown sampling mode {self.mode!r}; use one of: {', '.join(MODES)}")
        if self.init not in INITS:
            raise ConfigError(f"unknown init {self.init!r}; use one of: {', '.join(INITS)}")
        if self.steps < 0 or self.copies < 0:
            raise ConfigError(f"steps and copies must be >= 0 (got steps={self.steps}, copies={self.copies})")
        if self.aesthetic_weight < 0:
            raise ConfigError(f"aesthetic_weight must be >= 0, got {self.aesthetic_weight}")
        if self.clip_norm <= 0:
            raise ConfigError(f"clip_norm must be > 0, got {self.clip_norm}")

    def hparams(self) -> dict[str, np.ndarray]:
        """The step graph's hyperparameter inputs, by name: float32 [1] each (HPARAM_NAMES)."""
        return {n: np.array([getattr(self, n)], dtype=np.float32) for n in HPARAM_NAMES}

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, **overrides) -> "SamplingConfig":
        known = {f.name for f in fields(self)}
        bad = [k for k in overrides if k not in known]
        if bad:
            raise ConfigError(f"unknown sampling setting(s) {bad}; known: {', '.join(sorted(known))}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


# The step graph's hyperparameter inputs, each its own named float32 [1] input (never a positional vector).
HPARAM_NAMES = ("latent_lr", "momentum", "noise_std", "logits_lr", "clip_norm", "adam_eps")

PRESETS = {
    "paper": SamplingConfig(),
    "fast": SamplingConfig(steps=25, copies=8),
}


def preset(name: str, **overrides) -> SamplingConfig:
    if name not in PRESETS:
        raise unknown_name("sampling preset", name, PRESETS)
    return PRESETS[name].with_overrides(**overrides)
