"""The one interface every engine implements. The graphs it runs, with their tensors, are declared in
tr0n_rt/graphs.py; what the sampler needs to know of a pipeline is PipelineInfo.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from ..settings import SamplingConfig


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
        """Runs one graph (tr0n_rt/graphs.py: its inputs by name -> its outputs by name); inputs are numpy
        arrays or arrays this backend returned."""

    def to_host(self, x) -> np.ndarray:
        return np.asarray(x)

    def to_device(self, x: np.ndarray):
        return x

    def synchronize(self) -> None:
        """Waits for queued device work (for honest stage timings)."""

    def load(self, graph: str) -> None:
        """Prepares a graph now (a session, an engine) so that its first run does not pay for it.
        Idempotent; engines that need no preparation do nothing."""

    def chunked_step(self, state: dict, latent, fixed: dict, aug, sgld, chunk: int):
        """One chunked step (tr0n_rt/stepping.py) -> (the next state, E [B], z'_next [B, D]): its graphs one
        run at a time. A backend that captures the sequence as one CUDA graph overrides this."""
        from ..stepping import chunked_step

        return chunked_step(self, state, latent, fixed, aug, sgld, chunk)

    def memory_model(self):
        """The bundle's counted memory (memory.MemoryModel) for this backend's precision; None without one."""
        return None

    def memory_free(self) -> int | None:
        """Bytes the backend's device has free now (the host's MemAvailable for CPU backends); None if unknown."""
        return None

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
