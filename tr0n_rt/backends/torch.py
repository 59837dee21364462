"""The torch backend: the reference execution of every graph, eager (CUDA graphs come later).

Imports torch and tr0n_rt.export lazily, so the runtime core stays importable without them.
"""
from __future__ import annotations

import numpy as np

from ..errors import BackendError
from .base import STATE_NAMES, Backend, PipelineInfo


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, pipeline, device: str = "cpu"):
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
        )

    @classmethod
    def open(cls, folder, device: str = "cpu") -> "TorchBackend":
        try:
            import torch  # noqa: F401

            from ..export.pipeline import TorchPipeline
        except ImportError as e:
            raise BackendError(
                f"the torch backend needs torch and the export extra ({e}); install with "
                "`pip install 'tr0n-rt[export]'`"
            ) from None
        return cls(TorchPipeline.load(folder), device=device)

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
        from ..export.step import langevin_step

        t = {k: self.to_device(v) for k, v in inputs.items()}
        p = self.pipeline
        with self.torch.no_grad():
            if graph == "text_encoder":
                return {"condition": p.condition_model.encode_text(t["tokens"])}
            if graph == "translator":
                out = p.translator(t["condition"])
                return {k: out[k] for k in ("logits", "means", "std")}
            if graph == "generator":
                return {"images": p.generator(t["latent"])}
            if graph == "energy":
                return {"energy": self.energy(t["latent"], t["condition"], t["aug_noise"])}
            if graph == "step":
                state = {n: t[n] for n in STATE_NAMES}
                new, e = langevin_step(self.energy, state, t["condition"], t["aug_noise"], t["sgld_noise"],
                                       t["hparams"], bound=self.bound)
                return {**{f"{n}_next": new[n] for n in STATE_NAMES}, "energy": e}
        raise BackendError(f"the torch backend has no graph {graph!r}")
