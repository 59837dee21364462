"""Sampling hyperparameters and presets (torch-free: the runtime and the exporter share them).

`paper` is the reference code's setting for StyleGAN2/NVAE (github.com/layer6ai-labs/tr0n, text
evaluators): T = 100 steps, A = 50 augmentations, SGLD lr 0.1 with momentum 0.99 and noise std 0.01 on
the mixture means, Adam lr 5e-3 on the per-dimension mixture logits, gradient norms clipped to 1.
`fast` trades some quality for ~10x less compute: T = 25, A = 8.

Every setting is bounded (RANGES): a value outside its range is a ConfigError that gives the range, before
anything is allocated or run. The bounds are far outside any useful setting and keep every number finite in
float32 (the step graph takes the hyperparameters as float32):

    steps             0 .. MAX_STEPS (10000): the paper uses 100; each step is one graph run per batch
    copies            0 .. MAX_COPIES (1024): the exported graphs' largest `copies` axis (export/graphs.py)
    latent_lr         0 .. MAX_LR (1000): SGLD step on the means (paper 0.1, BigGAN 5.0)
    logits_lr         0 .. MAX_LR: Adam on the logits (paper 5e-3)
    momentum          0 .. 1: 1 keeps all of the velocity; above 1 the velocity grows without bound
    noise_std         0 .. MAX_NOISE_STD (100): latents live at scale ~1
    clip_norm         MIN_POSITIVE .. MAX_CLIP_NORM (1e6), > 0: a gradient norm clip of 0 freezes the means
    adam_eps          MIN_POSITIVE .. 1, > 0: Adam divides by sqrt(v) + eps, 0 would give 0/0 = NaN
    aesthetic_weight  0 .. MAX_AESTHETIC_WEIGHT (1000)
    candidates        1 .. MAX_CANDIDATES (64): sample mode's draws of z0 per image, the lowest energy kept
    start_noise       0 .. MAX_NOISE_STD: sample mode's extra noise on z0, in units of the prior's std (1)

MIN_POSITIVE (1e-30) is the floor of the settings that must be > 0: well above float32's smallest normal
number (1.2e-38), so the value the step graph receives is never 0. tr0n_rt/schemas/manifest.schema.json
bounds a bundle's `sampling` with the same numbers (tests/test_formats.py checks that they agree).
"""
from __future__ import annotations

import functools
import numbers
import reprlib
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from .errors import ConfigError, unknown_name

MODES = ("mixture", "sample")
INT_FIELDS = {"steps": int, "copies": int, "candidates": int}
FLOAT_FIELDS = ("latent_lr", "momentum", "noise_std", "logits_lr", "clip_norm", "adam_eps", "aesthetic_weight",
                "start_noise")
INITS = ("translator", "prior")

MAX_STEPS = 10_000
MAX_COPIES = 1024  # = the exported graphs' dynamic `copies` axis maximum (export/graphs.py)
MAX_LR = 1000.0
MAX_NOISE_STD = 100.0
MAX_CLIP_NORM = 1e6
MAX_AESTHETIC_WEIGHT = 1000.0
MAX_CANDIDATES = 64  # each candidate costs one energy evaluation (G forward + A CLIP forwards) per image
MIN_POSITIVE = 1e-30  # the floor of a setting that must be > 0: a normal, positive float32
# field -> (lowest, highest), both included: the range every setting must lie in (module docstring).
RANGES = {
    "steps": (0, MAX_STEPS),
    "copies": (0, MAX_COPIES),
    "latent_lr": (0.0, MAX_LR),
    "momentum": (0.0, 1.0),
    "noise_std": (0.0, MAX_NOISE_STD),
    "logits_lr": (0.0, MAX_LR),
    "clip_norm": (MIN_POSITIVE, MAX_CLIP_NORM),
    "adam_eps": (MIN_POSITIVE, 1.0),
    "aesthetic_weight": (0.0, MAX_AESTHETIC_WEIGHT),
    "candidates": (1, MAX_CANDIDATES),
    "start_noise": (0.0, MAX_NOISE_STD),
}


_REPR = reprlib.Repr()  # looks at a bounded part of a value: a setting may be anything a caller or a file passed
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxstring, _REPR.maxother = 2, 6, 8, 60, 60


def _shown(value, limit: int = 100) -> str:
    """repr(value) for a message, cut to `limit` characters."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"  # str() refuses > 4300 digits
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


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
    # Sample mode's start (mixture mode and init "prior" ignore both): `candidates` draws
    # z0_j = mu_k_j + std * eps_j + start_noise * eps'_j, j = 1 .. candidates, and the one of lowest energy
    # starts Langevin. 1 and 0: the paper's Algorithm 2, z0 ~ q(z | c).
    candidates: int = 1
    start_noise: float = 0.0

    def __post_init__(self):
        for f in fields(self):  # numbers as numbers: numpy scalars and ints for floats pass, "8" or 2.5 steps do not
            value, kind = getattr(self, f.name), INT_FIELDS.get(f.name, float if f.name in FLOAT_FIELDS else None)
            if kind is None:
                continue
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or (
                    kind is int and not isinstance(value, numbers.Integral)) or not _finite(value):
                raise ConfigError(f"{f.name} must be a finite {'whole number' if kind is int else 'number'} "
                                  f"{range_in_words(f.name)}, got {_shown(value)}")
            lo, hi = RANGES[f.name]
            if not lo <= value <= hi:
                why = f" ({_WHY_POSITIVE[f.name]})" if f.name in _WHY_POSITIVE and value <= 0 else ""
                raise ConfigError(f"{f.name} must be {range_in_words(f.name)}, got {_shown(value)}{why}")
            object.__setattr__(self, f.name, kind(value))
        if not isinstance(self.mode, str) or self.mode not in MODES:
            raise ConfigError(f"unknown sampling mode {_shown(self.mode)}; use one of: {', '.join(MODES)}")
        if not isinstance(self.init, str) or self.init not in INITS:
            raise ConfigError(f"unknown init {_shown(self.init)}; use one of: {', '.join(INITS)}")

    def hparams(self) -> dict[str, np.ndarray]:
        """The step graph's hyperparameter inputs, by name: float32 [1] each (HPARAM_NAMES)."""
        return {n: np.array([getattr(self, n)], dtype=np.float32) for n in HPARAM_NAMES}

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, **overrides) -> "SamplingConfig":
        known = {f.name for f in fields(self)}
        bad = [k for k in overrides if k not in known]
        if bad:
            raise ConfigError(f"unknown sampling setting(s) {_shown(bad)}; known: {', '.join(sorted(known))}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


_WHY_POSITIVE = {"clip_norm": "a norm clip of 0 freezes the means", "adam_eps": "Adam divides by sqrt(v) + eps"}


def _finite(value) -> bool:
    """Integers are finite however large (their range is checked next); floats must not be NaN or infinite."""
    if isinstance(value, numbers.Integral):
        return True
    try:
        return bool(np.isfinite(value))
    except (TypeError, OverflowError):
        return False


def range_in_words(name: str) -> str:
    """'>= 0 and <= 10000', '> 0 (at least 1e-30) and <= 1e+06': the range of RANGES[name], in words."""
    lo, hi = RANGES[name]
    low = f"> 0 (at least {lo:g})" if lo == MIN_POSITIVE else f">= {lo:g}"
    return f"{low} and <= {hi:g}"


_NAMES = frozenset(f.name for f in fields(SamplingConfig))
_dataclass_init = SamplingConfig.__init__


@functools.wraps(_dataclass_init)
def _init(self, *args, **settings):
    """The dataclass's __init__, with unknown names (a file's typo, a setting of another version) refused as a
    ConfigError that lists the known ones instead of a TypeError."""
    unknown = sorted(map(str, settings.keys() - _NAMES))
    if unknown:
        raise ConfigError(f"unknown sampling setting(s) {_shown(unknown)}; known: {', '.join(sorted(_NAMES))}")
    if len(args) > len(_NAMES):
        raise ConfigError(f"SamplingConfig takes at most {len(_NAMES)} settings, got {len(args)} positional ones")
    _dataclass_init(self, *args, **settings)


SamplingConfig.__init__ = _init

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
