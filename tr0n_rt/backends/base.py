"""The one interface every engine implements, and the graph contract the sampler relies on.

Graphs (names, inputs -> outputs; B = batch, K = mixture components, D = latent size, A = copies):
    text_encoder  tokens int64 [B, L]                                  -> condition [B, d_c]
    image_encoder pixels [B, 3, S, S] in [0, 1] (resized + cropped)    -> condition [B, d_c]
    translator    condition [B, d_c]                                   -> logits [B, K], means [B, K, D], std [D]
    image_translator  as translator, trained on image embeddings without condition noise
    step          means, logits, velocity, adam_m, adam_v [B, K, D], step [1],
                  condition [B, d_c], aug_noise [B, A, 8], sgld_noise [B, K, D], hparams [6]
                  (+ aesthetic_weight [1] with an aesthetic head)      -> <state>_next ..., energy [B]
    energy        latent [B, D], condition [B, d_c], aug_noise [B, A, 8] -> energy [B] (similarity term only)
                                                                          (+ aesthetic [B] with a head)
    generator     latent [B, D]                                        -> images [B, C, H, W] in [-1, 1]
All floating tensors are float32 at the interface (FP16 lives inside engines). Graphs beyond
translator, step, energy and generator are optional (text_encoder: text pipelines).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from ..settings import SamplingConfig

STATE_NAMES = ("means", "logits", "velocity", "adam_m", "adam_v", "step")
GRAPHS = ("text_encoder", "image_encoder", "translator", "image_translator", "step", "energy", "generator")


@dataclass
class PipelineInfo:
    """What the sampler needs to know of a pipeline, whichever engine runs it."""

    name: str
    condition: str  # "text" | "class"
    cond_dim: int
    latent_dim: int
    num_components: int
    image_size: int
    channels: int
    latent_bounds: float | None = None  # refined latents live in [-b, b] (BigGAN: 2)
    tokenizer: dict | None = None
    classes: list[str] | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    image_input: dict | None = None  # {"size", "mean", "std", ...}: CLIP pipelines take image conditions
    image_translator: bool = False  # a separate translator for image conditions
    aesthetic: bool = False  # an aesthetic head: step takes aesthetic_weight, energy returns aesthetic


class Backend(ABC):
    """Runs a pipeline's graphs. Arrays it returns may live on a device; the sampler passes them back
    in unchanged and asks for host copies only where it needs numbers."""

    name: str = ""
    info: PipelineInfo

    @abstractmethod
    def run(self, graph: str, inputs: dict) -> dict:
        """Runs one graph; inputs are numpy arrays or arrays this backend returned."""

    def to_host(self, x) -> np.ndarray:
        return np.asarray(x)

    def to_device(self, x: np.ndarray):
        return x

    def synchronize(self) -> None:
        """Waits for queued device work (for honest stage timings)."""

    def load(self, graph: str) -> None:
        """Prepares a graph now (a session, an engine) so that its first run does not pay for it.
        Idempotent; engines that need no preparation do nothing."""

    @property
    def fp16_fallbacks(self) -> int | None:
        """Steps an FP16 guard reran on the float32 graph; None for a backend without such a guard."""
        return None

    @property
    def graph_sources(self) -> dict[str, str]:
        """Where each loaded graph came from (a bundle file, an optimised-graph cache); {} if untracked."""
        return {}

    @property
    def graph_stats(self) -> dict:
        """CUDA-graph captures and replays per step shape; {} when nothing is captured."""
        return {}
