"""The torch backend: the reference execution of every graph; on CUDA the Langevin step is captured
in a CUDA graph per shape and replayed (`cuda_graphs=True`, the default; eager on the CPU).

Imports torch and tr0n_rt.export lazily, so the runtime core stays importable without them.

The captured step (TorchStepGraphs), per (batch, copies, components): static tensors for every step
input; a warm-up on a side stream; then one capture of langevin_step (forward, autograd backward and
update) that ends by copying the new state into the static state inputs, so each replay advances the
state in place. A call copies its noise, condition and hyperparameters into the static inputs, and its
state too unless it passes back the state the previous replay returned (the static tensors themselves);
then replays. The returned state tensors are those static inputs: they are overwritten by the next
step of the same shape (the sampler only ever passes the latest state on). Energy is returned as a copy.
The chunked step (tr0n_rt/stepping.py: generator, energy_grad per chunk, update) is captured the same way,
per (batch, copies, components, chunk), as one fixed sequence of launches; its latent is static too.
"""
from __future__ import annotations

import numpy as np

from ..errors import BackendError, ConfigError
from ..graphs import STATE_NAMES
from .base import Backend, PipelineInfo


def check_torch_device(torch, device):
    """The torch device for `device` (cpu, cuda, cuda:N); ConfigError for anything else, BackendError for a
    CUDA device torch cannot see. The one check of the torch backend, pairs and translator training."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= count:
            raise BackendError(f"device {device!r}: torch {torch.__version__} sees {count} CUDA device(s) "
                               f"(built for CUDA {torch.version.cuda or 'none'}); use --device cpu, or check the "
                               "driver and CUDA_VISIBLE_DEVICES")
    elif dev.type != "cpu":
        raise ConfigError(f"device {device!r} is not supported: use cpu, cuda or cuda:N")
    return dev


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, pipeline, device: str = "cpu", cuda_graphs: bool = True):
        import torch

        self.torch = torch
        self.pipeline = pipeline
        self.device = torch.device(device)
        p = pipeline
        for module in (p.generator, p.condition_model, p.translator, p.image_translator, p.aesthetic):
            if module is not None:
                module.to(self.device)
        self.info = PipelineInfo(
            name=p.name, condition=p.condition, cond_dim=p.translator.config.cond_dim,
            latent_dim=p.generator.latent.dim, num_components=p.translator.config.num_components,
            image_size=p.generator.image_size, channels=p.generator.channels, latent_bounds=p.generator.latent.bounds,
            tokenizer=p.spec.get("tokenizer"), classes=p.classes, sampling=p.sampling,
            image_input=p.condition_model.image_input() if p.image_conditioning else None,
            image_translator=p.image_translator is not None, aesthetic=p.aesthetic is not None,
        )
        from ..export.graphs import graph_function, graph_specs

        self.specs = {s.name: s for s in graph_specs(p)}
        self.functions = {name: graph_function(p, name) for name in self.specs}  # what the exporter traces
        self.step_inputs = self.specs["step"].inputs
        self.step_graphs = TorchStepGraphs(self) if cuda_graphs and self.device.type == "cuda" else None

    @classmethod
    def open(cls, folder, device: str = "cpu", cuda_graphs: bool = True) -> "TorchBackend":
        try:
            import torch  # noqa: F401

            from ..export.pipeline import TorchPipeline
        except ImportError as e:
            raise BackendError(
                f"the torch backend needs torch and the export extra ({e}); install with "
                "`pip install 'tr0n-rt[export]'`"
            ) from None
        check_torch_device(torch, device)
        return cls(TorchPipeline.load(folder), device=device, cuda_graphs=cuda_graphs)

    def to_device(self, x):
        if isinstance(x, self.torch.Tensor):
            return x.to(self.device)
        return self.torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

    def to_host(self, x) -> np.ndarray:
        if isinstance(x, self.torch.Tensor):
            return x.detach().cpu().numpy()
        return np.asarray(x)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def run(self, graph: str, inputs: dict) -> dict:
        """Runs the very torch function the exporter traces for this graph (tr0n_rt/graphs.py names);
        the step replays a captured CUDA graph on CUDA."""
        spec = self.specs.get(graph)
        if spec is None:
            raise BackendError(f"pipeline {self.info.name!r} has no graph {graph!r} (has: {', '.join(self.specs)})")
        t = {k: self.to_device(v) for k, v in inputs.items()}
        if graph == "step":
            return self.step_graphs.run(t) if self.step_graphs is not None else self.eager_step(t)
        with self.torch.no_grad():
            return dict(zip(spec.outputs, self.functions[graph](*(t[n] for n in spec.inputs))))

    def chunked_step(self, state: dict, latent, fixed: dict, aug, sgld, chunk: int):
        """The chunked step (tr0n_rt/stepping.py); on CUDA captured as one CUDA graph per shape and chunk."""
        if self.step_graphs is None:
            return super().chunked_step(state, latent, fixed, aug, sgld, chunk)
        t = {k: self.to_device(v) for k, v in {**state, **fixed, "latent": latent, "aug_noise": aug,
                                               "sgld_noise": sgld}.items()}
        return self.step_graphs.run_chunked(t, chunk)

    def eager_step(self, t: dict) -> dict:
        spec = self.specs["step"]
        return dict(zip(spec.outputs, self.functions["step"](*(t[n] for n in spec.inputs))))

    def memory_model(self):
        """The counts of a bundle exported into the pipeline's own folder (fp32), if there is one."""
        from ..bundle import read_manifest
        from ..memory import MemoryModel

        folder = self.pipeline.folder
        return MemoryModel(read_manifest(folder), "fp32") if (folder / "manifest.json").is_file() else None

    def memory_free(self) -> int | None:
        if self.device.type == "cuda":
            return int(self.torch.cuda.mem_get_info(self.device)[0])
        from ..memory import available_host_bytes

        return available_host_bytes()

    @property
    def graph_stats(self) -> dict:
        """Captures and replays per step shape (empty when the step runs eagerly)."""
        return self.step_graphs.stats.as_dict() if self.step_graphs is not None else {}


class TorchStepGraphs:
    """langevin_step captured once per (batch, copies, components) and replayed, state updated in place."""

    def __init__(self, backend: TorchBackend, device=None):
        """device: where graphs are captured (cuda.TorchCuda for the backend's GPU; tests pass a recorder)."""
        from .cuda import TorchCuda
        from .step_graphs import GraphStats

        self.backend = backend
        self.device = device or TorchCuda(str(backend.device))
        self.entries: dict = {}  # key -> (graph, static inputs, static energy)
        self.stats = GraphStats()

    def capture(self, key, like: dict):
        """Static inputs shaped like `like`, a warm-up on a side stream, one capture."""
        torch, be = self.backend.torch, self.backend
        static = {n: like[n].clone() for n in be.step_inputs}  # warm-up on the first call's own data
        energy = torch.zeros(like["means"].shape[0], dtype=like["means"].dtype, device=be.device)

        def step():
            out = be.eager_step(static)
            for n in STATE_NAMES:
                static[n].copy_(out[f"{n}_next"])
            energy.copy_(out["energy"])

        self.entries[key] = (self._captured(key, step), static, energy)
        return self.entries[key]

    def _captured(self, key, step):
        """One CUDA graph of step() after a warm-up (both advance the static tensors: callers copy their
        inputs in again), or None where it cannot be captured: that shape then runs eagerly."""
        try:
            graph = self.device.capture(step, warmup=2)
        except Exception as e:  # an op that cannot be captured
            self.stats.capture_errors[key] = f"{type(e).__name__}: {e}"
            return None
        self.stats.captures[key] = 1
        return graph

    def _replay(self, key, graph, static: dict, t: dict, names) -> None:
        """Copies the inputs `names` of t into the static tensors, unless they are those tensors (the state the
        previous replay returned), and replays."""
        copied = False
        for n in names:
            x = t[n]
            if x.data_ptr() != static[n].data_ptr() or x.shape != static[n].shape:
                static[n].copy_(x)
                copied |= n in STATE_NAMES
        self.stats.copies_in += copied
        graph.replay()
        self.stats.replays[key] = self.stats.replays.get(key, 0) + 1

    def run_chunked(self, t: dict, chunk: int) -> tuple:
        """The chunked step, captured per (batch, copies, components, chunk): generator, energy_grad per chunk
        and update, one fixed sequence of launches. t: the state, `latent`, the fixed inputs, `aug_noise` and
        `sgld_noise` as tensors on the device -> (state, E, latent), state and latent the static tensors
        (advanced in place by each replay, as the step's)."""
        from ..stepping import chunked_step

        torch, be = self.backend.torch, self.backend
        b, a, _ = t["aug_noise"].shape
        key = (int(b), int(a), int(t["means"].shape[1]), int(chunk))
        if key not in self.entries:
            static = {n: x.clone() for n, x in t.items()}
            info = be.info
            start = {"grad_sum": torch.zeros(b, info.channels, info.image_size, info.image_size, device=be.device),
                     "energy_sum": torch.zeros(b, device=be.device),
                     "copies": torch.full((1,), float(a), device=be.device)}  # made before capture: no copies inside
            energy = torch.zeros(b, device=be.device)
            fixed = [n for n in t if n not in STATE_NAMES and n not in ("latent", "aug_noise", "sgld_noise")]

            def step():
                new, e, z = chunked_step(be, {n: static[n] for n in STATE_NAMES}, static["latent"],
                                         {n: static[n] for n in fixed}, static["aug_noise"], static["sgld_noise"],
                                         chunk, start)
                for n in STATE_NAMES:
                    static[n].copy_(new[n])
                static["latent"].copy_(z)
                energy.copy_(e)

            self.entries[key] = (self._captured(key, step), static, energy)
        graph, static, energy = self.entries[key]
        if graph is None:
            self.stats.eager += 1
            fixed = {n: t[n] for n in t if n not in STATE_NAMES and n not in ("latent", "aug_noise", "sgld_noise")}
            return chunked_step(be, {n: t[n] for n in STATE_NAMES}, t["latent"], fixed, t["aug_noise"],
                                t["sgld_noise"], chunk)
        self._replay(key, graph, static, t, list(t))
        return {n: static[n] for n in STATE_NAMES}, energy.clone(), static["latent"]

    def run(self, t: dict) -> dict:
        """t: every step input as a tensor on the backend's device -> outputs; state outputs are the static
        state tensors (see the module docstring)."""
        from .step_graphs import shape_key

        key = shape_key({n: tuple(t[n].shape) for n in ("means", "aug_noise")})
        graph, static, energy = self.entries.get(key) or self.capture(key, t)
        if graph is None:
            self.stats.eager += 1
            return self.backend.eager_step(t)
        self._replay(key, graph, static, t, self.backend.step_inputs)
        return {**{f"{n}_next": static[n] for n in STATE_NAMES}, "energy": energy.clone()}
