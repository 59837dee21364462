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
"""
from __future__ import annotations

import numpy as np

from ..errors import BackendError, ConfigError
from .base import STATE_NAMES, Backend, PipelineInfo


def check_torch_device(torch, device: str) -> None:
    """ConfigError for a device string torch cannot parse, BackendError for a CUDA device it cannot see."""
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


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, pipeline, device: str = "cpu", cuda_graphs: bool = True):
        import torch

        self.torch = torch
        self.pipeline = pipeline
        self.device = torch.device(device)
        for module in (pipeline.generator, pipeline.condition_model, pipeline.translator):
            module.to(self.device)
        self.energy = pipeline.energy()
        p = pipeline
        self.bound = p.generator.latent.bounds
        self.info = PipelineInfo(
            name=p.name, condition=p.condition, cond_dim=p.translator.config.cond_dim,
            latent_dim=p.generator.latent.dim, num_components=p.translator.config.num_components,
            image_size=p.generator.image_size, channels=p.generator.channels, latent_bounds=self.bound,
            tokenizer=p.spec.get("tokenizer"), classes=p.classes, sampling=p.sampling,
            image_input=p.condition_model.image_input() if p.image_conditioning else None,
            image_translator=p.image_translator is not None, aesthetic=p.aesthetic is not None,
        )
        self.step_inputs = STEP_INPUTS + (("aesthetic_weight",) if p.aesthetic is not None else ())
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
        t = {k: self.to_device(v) for k, v in inputs.items()}
        p = self.pipeline
        with self.torch.no_grad():
            if graph == "text_encoder":
                return {"condition": p.condition_model.encode_text(t["tokens"])}
            if graph == "image_encoder" and p.image_conditioning:
                return {"condition": p.condition_model.encode_pixels(t["pixels"])}
            if graph == "translator" or (graph == "image_translator" and p.image_translator is not None):
                out = (p.translator if graph == "translator" else p.image_translator)(t["condition"])
                return {k: out[k] for k in ("logits", "means", "std")}
            if graph == "generator":
                return {"images": p.generator(t["latent"])}
            if graph == "energy":
                return self.energy.graph_outputs(t["latent"], t["condition"], t["aug_noise"])
            if graph == "step":
                return self.step_graphs.run(t) if self.step_graphs is not None else self.eager_step(t)
        raise BackendError(f"the torch backend has no graph {graph!r}")

    def eager_step(self, t: dict) -> dict:
        from ..export.step import langevin_step

        state = {n: t[n] for n in STATE_NAMES}
        new, e = langevin_step(self.energy, state, t["condition"], t["aug_noise"], t["sgld_noise"], t["hparams"],
                               bound=self.bound, aesthetic_weight=t.get("aesthetic_weight"))
        return {**{f"{n}_next": new[n] for n in STATE_NAMES}, "energy": e}

    @property
    def graph_stats(self) -> dict:
        """Captures and replays per step shape (empty when the step runs eagerly)."""
        return self.step_graphs.stats.as_dict() if self.step_graphs is not None else {}


STEP_INPUTS = STATE_NAMES + ("condition", "aug_noise", "sgld_noise", "hparams")


class TorchStepGraphs:
    """langevin_step captured once per (batch, copies, components) and replayed, state updated in place."""

    def __init__(self, backend: TorchBackend, device=None):
        """device: where graphs are captured (cuda.TorchCuda for the backend's GPU; tests pass a recorder)."""
        from .cuda import GraphStats, TorchCuda

        self.backend = backend
        self.device = device or TorchCuda(str(backend.device))
        self.entries: dict = {}  # key -> (graph, static inputs, static energy)
        self.stats = GraphStats()

    def capture(self, key, like: dict):
        """Static inputs shaped like `like`, a warm-up on a side stream, one capture."""
        from ..export.step import langevin_step

        torch, be = self.backend.torch, self.backend
        static = {n: like[n].clone() for n in be.step_inputs}  # warm-up on the first call's own data
        energy = torch.zeros(like["means"].shape[0], dtype=like["means"].dtype, device=be.device)

        def step():
            new, e = langevin_step(be.energy, {n: static[n] for n in STATE_NAMES}, static["condition"],
                                   static["aug_noise"], static["sgld_noise"], static["hparams"], bound=be.bound,
                                   aesthetic_weight=static.get("aesthetic_weight"))
            for n in STATE_NAMES:
                static[n].copy_(new[n])
            energy.copy_(e)

        try:
            graph = self.device.capture(step, warmup=2)  # warm-up and capture advance `static`: run() copies again
        except Exception as e:  # an op that cannot be captured: this shape runs eagerly
            self.stats.capture_errors[key] = f"{type(e).__name__}: {e}"
            graph = None
        else:
            self.stats.captures[key] = 1
        self.entries[key] = (graph, static, energy)
        return self.entries[key]

    def run(self, t: dict) -> dict:
        """t: every step input as a tensor on the backend's device -> outputs; state outputs are the static
        state tensors (see the module docstring)."""
        from .cuda import shape_key

        key = shape_key({n: tuple(t[n].shape) for n in ("means", "aug_noise")})
        graph, static, energy = self.entries.get(key) or self.capture(key, t)
        if graph is None:
            self.stats.eager += 1
            return self.backend.eager_step(t)
        copied = False
        for n in self.backend.step_inputs:
            x = t[n]
            if x.data_ptr() != static[n].data_ptr() or x.shape != static[n].shape:
                static[n].copy_(x)
                copied |= n in STATE_NAMES
        self.stats.copies_in += copied
        graph.replay()
        self.stats.replays[key] = self.stats.replays.get(key, 0) + 1
        return {**{f"{n}_next": static[n] for n in STATE_NAMES}, "energy": energy.clone()}
