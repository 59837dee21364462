"""TR0N's sampling loop (Algorithm 2), over any backend: condition -> translator -> T x step -> G.

All randomness is drawn on the host, per image, from numpy generators seeded by that image's seed, in
a fixed order (initial draw, then per step: A x 8 augmentation numbers, K x D SGLD noise). So an image
depends only on its condition and seed: a batch of 8 gives the same images as 8 runs of one.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .backends.base import STATE_NAMES, Backend
from .errors import ConfigError, PromptError, ShapeError
from .settings import SamplingConfig

AUG_DIM = 8
# DiffAugment numbers that leave an image unchanged (export/augment.py): copies = 0 runs as one such copy.
IDENTITY_AUG = np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 2.0, 2.0], dtype=np.float32)


@dataclass
class SampleBatch:
    images: np.ndarray  # [B, C, H, W] float32 in [-1, 1]
    latents: np.ndarray  # [B, D] the latent fed to G
    energies: np.ndarray  # [B] energy of the final latent, similarity term only (nan when T = 0)
    energy_trace: np.ndarray  # [T, B] energy at each step's input state
    seeds: list[int]
    config: SamplingConfig
    seconds: dict[str, float] = field(default_factory=dict)  # per stage, for the whole batch
    aesthetic: np.ndarray | None = None  # [B] aesthetic score of the final latent (pipelines with a head, T > 0)


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class Sampler:
    """Loads nothing itself: give it an open backend. `sample_*` methods return a SampleBatch."""

    def __init__(self, backend: Backend, config: SamplingConfig | None = None):
        self.backend = backend
        self.info = backend.info
        self.config = config or backend.info.sampling
        self._tokenizer = None

    # --- conditions ----------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if not self.info.tokenizer:
                raise PromptError(f"pipeline {self.info.name!r} is class-conditional: give classes, not text "
                                  f"(classes: {', '.join(self.info.classes or [])})")
            from .tokenizer import tokenizer_from_dict

            self._tokenizer = tokenizer_from_dict(self.info.tokenizer)
        return self._tokenizer

    def encode_text(self, prompts: list[str]) -> np.ndarray:
        """prompts -> conditions [N, d_c] (the CLIP text embedding)."""
        tokens = self.tokenizer(list(prompts), allow_empty=False)
        out = self.backend.run("text_encoder", {"tokens": tokens})
        return self.backend.to_host(out["condition"]).astype(np.float32)

    def encode_classes(self, classes: list[str | int]) -> np.ndarray:
        """class names or indices -> one-hot conditions [N, num_classes]."""
        names = self.info.classes
        if not names:
            raise PromptError(f"pipeline {self.info.name!r} is text-conditional: give prompts, not classes")
        c = np.zeros((len(classes), len(names)), dtype=np.float32)
        for i, cls in enumerate(classes):
            c[i, self.class_index(cls)] = 1.0
        return c

    def image_input(self) -> dict:
        """How this pipeline's image_encoder takes images (bundle field image_input), or a PromptError."""
        if not self.info.image_input:
            raise PromptError(f"pipeline {self.info.name!r} takes no image conditions (its condition model is not "
                              "CLIP, or its bundle was exported without an image_encoder graph: re-export it)")
        return self.info.image_input

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """pixels [N, 3, S, S] in [0, 1] (images.clip_pixels) -> conditions [N, d_c] (CLIP image embedding)."""
        self.image_input()
        out = self.backend.run("image_encoder", {"pixels": np.ascontiguousarray(pixels, dtype=np.float32)})
        return self.backend.to_host(out["condition"]).astype(np.float32)

    def image_conditions(self, paths) -> tuple[np.ndarray, list]:
        """Image files (or folders of them) -> (conditions [N, d_c], the files in order)."""
        from .images import clip_pixels, image_files

        size = self.image_input()["size"]
        files = [f for p in paths for f in image_files(p)]
        return self.encode_images(np.stack([clip_pixels(f, size) for f in files])), files

    @property
    def image_translator(self) -> str:
        """The translator graph for image conditions: the one trained without condition noise when there is one."""
        return "image_translator" if self.info.image_translator else "translator"

    def class_index(self, cls: str | int) -> int:
        names = self.info.classes or []
        key = str(cls).strip().lower()
        for prefix in ("digit ", "class "):
            key = key.removeprefix(prefix)
        if key in names:
            return names.index(key)
        raise PromptError(f"unknown class {cls!r} for pipeline {self.info.name!r}; known: {', '.join(names)}")

    def conditions(self, queries: list[str]) -> np.ndarray:
        """Prompts (text pipelines) or class names (class pipelines) -> conditions."""
        if self.info.condition == "class":
            return self.encode_classes(queries)
        return self.encode_text(queries)

    # --- sampling ------------------------------------------------------------------------------
    def sample(self, conditions: np.ndarray, seeds: list[int], config: SamplingConfig | None = None,
               translator: str = "translator") -> SampleBatch:
        """conditions [B, d_c] float32, one seed per row -> images. translator: the graph that maps
        conditions to the initial mixture (self.image_translator for image conditions)."""
        cfg = config or self.config
        if cfg.aesthetic_weight and not self.info.aesthetic:
            raise ConfigError(f"aesthetic_weight {cfg.aesthetic_weight} needs an aesthetic head, and pipeline "
                              f"{self.info.name!r} has none: add one (pipeline.json 'aesthetic') and re-export")
        conditions = np.ascontiguousarray(conditions, dtype=np.float32)
        if conditions.ndim != 2 or conditions.shape[1] != self.info.cond_dim:
            raise ShapeError(f"conditions have shape {conditions.shape}, expected [batch, {self.info.cond_dim}]")
        if len(seeds) != conditions.shape[0]:
            raise ShapeError(f"{len(seeds)} seeds for {conditions.shape[0]} conditions: give one seed per row")
        be, b, d = self.backend, conditions.shape[0], self.info.latent_dim
        rngs = [np.random.default_rng(int(s)) for s in seeds]
        seconds: dict[str, float] = {}

        tick = time.perf_counter()
        if cfg.init == "prior":  # baseline without translator: z0 ~ N(0, I), then Langevin
            means = np.stack([r.standard_normal(d, dtype=np.float32) for r in rngs])[:, None]
            if self.info.latent_bounds is not None:
                means = np.clip(means, -self.info.latent_bounds, self.info.latent_bounds)
            logits = np.zeros_like(means)
        else:
            tr = be.run(translator, {"condition": conditions})
            logits, means, std = (be.to_host(tr[k]) for k in ("logits", "means", "std"))
            means, logits = self._initial_mixture(cfg, rngs, logits, means, std)
        seconds["translate"] = time.perf_counter() - tick

        tick = time.perf_counter()
        trace = np.zeros((cfg.steps, b), dtype=np.float32)
        if cfg.steps:
            c_dev = be.to_device(conditions)
            hp = be.to_device(cfg.hparams())
            zeros = np.zeros_like(means)
            state = {"means": means, "logits": logits, "velocity": zeros, "adam_m": zeros, "adam_v": zeros,
                     "step": np.zeros(1, np.float32)}
            state = {k: be.to_device(v) for k, v in state.items()}
            fixed = {"condition": c_dev, "hparams": hp}
            if self.info.aesthetic:
                fixed["aesthetic_weight"] = be.to_device(np.array([cfg.aesthetic_weight], np.float32))
            energies = []
            for _ in range(cfg.steps):
                aug, noise = self._step_noise(rngs, cfg.copies, means.shape[1])
                out = be.run("step", {**state, **fixed, "aug_noise": aug, "sgld_noise": noise})
                state = {n: out[f"{n}_next"] for n in STATE_NAMES}
                energies.append(out["energy"])
            trace = np.stack([be.to_host(e) for e in energies]).astype(np.float32)
            means, logits = be.to_host(state["means"]), be.to_host(state["logits"])
            latents = (softmax(logits, axis=1) * means).sum(axis=1).astype(np.float32)
        else:
            latents = means[:, 0]
        be.synchronize()
        seconds["langevin"] = time.perf_counter() - tick

        final, aesthetic = np.full(b, np.nan, dtype=np.float32), None
        if cfg.steps:
            tick = time.perf_counter()
            aug = self._step_noise(rngs, cfg.copies, 0)[0]
            e = be.run("energy", {"latent": latents, "condition": conditions, "aug_noise": aug})
            final = be.to_host(e["energy"]).astype(np.float32)
            if "aesthetic" in e:
                aesthetic = be.to_host(e["aesthetic"]).astype(np.float32)
            seconds["final_energy"] = time.perf_counter() - tick

        tick = time.perf_counter()
        images = be.to_host(be.run("generator", {"latent": latents})["images"]).astype(np.float32)
        seconds["decode"] = time.perf_counter() - tick
        return SampleBatch(images, latents, final, trace, [int(s) for s in seeds], cfg, seconds, aesthetic)

    def _initial_mixture(self, cfg, rngs, logits, means, std):
        """Translator outputs -> the state's means and per-dimension logits, [B, K', D] each.

        mixture: all K means, logits copied per dimension. T = 0 keeps only the most probable mean
        (the reference's translator-only sample). sample: z0 ~ q(z | c), K' = 1."""
        b, k, d = means.shape
        if cfg.mode == "mixture":
            if cfg.steps == 0:
                best = logits.argmax(axis=1)
                return means[np.arange(b), best][:, None].copy(), np.zeros((b, 1, d), np.float32)
            return means.astype(np.float32), np.repeat(logits[:, :, None], d, axis=2).astype(np.float32)
        z0 = np.empty((b, d), np.float32)
        probs = softmax(logits.astype(np.float64), axis=1)
        for i, rng in enumerate(rngs):
            comp = rng.choice(k, p=probs[i])
            z0[i] = means[i, comp] + std * rng.standard_normal(d, dtype=np.float32)
        return z0[:, None], np.zeros((b, 1, d), np.float32)

    def _step_noise(self, rngs, copies: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Per image, in this order: A x 8 uniforms (augmentation), K x D normals (SGLD)."""
        d = self.info.latent_dim
        aug = np.empty((len(rngs), max(copies, 1), AUG_DIM), np.float32)
        noise = np.empty((len(rngs), k, d), np.float32)
        for i, rng in enumerate(rngs):
            aug[i] = rng.random((copies, AUG_DIM), dtype=np.float32) if copies else IDENTITY_AUG
            noise[i] = rng.standard_normal((k, d), dtype=np.float32)
        return aug, noise
