"""TR0N's sampling loop (Algorithm 2), over any backend: condition -> translator -> T x step -> G.

For embedding in an application, open once and call `generate` as often as needed:

    sampler = Sampler.open("engines/shapes", backend="auto", device="cpu", preset="fast")
    batch = sampler.generate(["a red star on a black background"], samples=4, seed=0)
    batch.images                               # [4, 3, H, W] float32 numpy in [-1, 1]
    batch = sampler.generate(embeddings=c, output="device")   # c [N, d_c]: conditions computed elsewhere
    torch.from_dlpack(batch.images)           # the backend's device array, no copy (DLPack)

All randomness is drawn on the host from the bundle format's counter-based scheme (tr0n_rt/noise.py,
docs/bundle-format.md): every number is a function of the image's seed, what it is for and the step, so
an image depends only on its condition and seed, and a client in any language can reproduce it. What a
batch of 8 gives compared with 8 runs of one depends on the backend's kernels: the README's "Batch
invariance" says what holds where.
"""
from __future__ import annotations

import numbers
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .backends.base import Backend
from .errors import ConfigError, PromptError, ShapeError
from .graphs import AUG_DIM, IDENTITY_AUG
from . import noise
from .memory import Plan, default_budget, parse_bytes, plan
from .settings import SamplingConfig
from .stepping import StepRunner, chunked_energy

OUTPUTS = ("numpy", "device")
# Bounds on what the Python API accepts, checked before any work:
MAX_IMAGES = 100_000  # images one generate call makes (conditions x samples): it is one batch
MAX_CONDITION = 1e4  # largest |element| of a condition: text and image conditions are unit-norm CLIP embeddings,
#                      class conditions one-hot, so 1e4 leaves room for unnormalised embeddings and refuses 1e38


@dataclass
class SampleBatch:
    images: np.ndarray  # [B, C, H, W] float32 in [-1, 1]; output="device": the backend's array (DLPack-capable)
    latents: np.ndarray  # [B, D] the latent fed to G
    energies: np.ndarray  # [B] energy of the final latent, similarity term only (nan when T = 0)
    energy_trace: np.ndarray  # [T, B] energy at each step's input state
    seeds: list[int]
    config: SamplingConfig
    seconds: dict[str, float] = field(default_factory=dict)  # per stage, for the whole batch
    aesthetic: np.ndarray | None = None  # [B] aesthetic score of the final latent (pipelines with a head, T > 0)
    plan: dict | None = None  # how the memory plan ran the batch (memory.Plan.as_dict: path, sub-batch, chunk)


def check_output(output: str) -> None:
    if not isinstance(output, str) or output not in OUTPUTS:
        raise ConfigError(f"unknown output {str(output)[:100]!r}; use one of: {', '.join(OUTPUTS)}")


def check_config(config) -> None:
    """None or a SamplingConfig, else a ConfigError (a preset's name is not a config)."""
    if config is None or isinstance(config, SamplingConfig):
        return
    if isinstance(config, str):
        raise ConfigError(f"config must be a SamplingConfig, got the string {config[:100]!r}: for a preset use "
                          f"Sampler.open(..., preset={config[:100]!r}) or config=tr0n_rt.settings.preset({config[:100]!r})")
    raise ConfigError(f"config must be a SamplingConfig (tr0n_rt.settings), got {type(config).__name__}")


def as_conditions(value) -> np.ndarray:
    """Conditions given as numbers (an array [N, d_c], or one [d_c]) -> a numeric array, at least 2-D; strings,
    objects and ragged lists raise PromptError / ShapeError instead of numpy's ValueError."""
    if isinstance(value, str | bytes) or (isinstance(value, list | tuple) and any(isinstance(v, str | bytes)
                                                                              for v in value)):
        raise PromptError("embeddings must be numbers (an array [N, d_c]), got text: for prompts use "
                          "generate(prompts=...), for class names generate(classes=...)")
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as e:  # ragged nested lists
        raise ShapeError(f"embeddings must be a rectangular array [N, d_c]: {str(e)[:100]}") from None
    if arr.dtype.kind not in "fiub":
        raise PromptError(f"embeddings must be real numbers (an array [N, d_c]), got an array of {arr.dtype} "
                          f"{str(list(arr.shape))[:100]}")
    return np.atleast_2d(arr)


def check_conditions(conditions, cond_dim: int) -> np.ndarray:
    """conditions [B, cond_dim] of finite numbers with |c| <= MAX_CONDITION -> contiguous float32, else
    ShapeError / PromptError, before any work (NaN or huge conditions would give NaN images silently)."""
    c = as_conditions(conditions)
    if c.ndim != 2 or c.shape[1] != cond_dim:
        raise ShapeError(f"conditions have shape {str(c.shape)[:100]}, expected [batch, {cond_dim}]")
    if c.size and c.dtype.kind == "f" and not np.isfinite(c).all():
        rows = np.flatnonzero(~np.isfinite(c).all(axis=1))
        raise PromptError(f"conditions hold NaN or infinite values (rows {str(rows[:5].tolist())[:100]}): give "
                          "finite numbers, e.g. a normalised CLIP embedding")
    big = max(abs(float(c.max())), abs(float(c.min()))) if c.size else 0.0  # no abs() overflow of int64 min
    if big > MAX_CONDITION:
        raise PromptError(f"a condition holds {big:.3g}, larger than {MAX_CONDITION:g} in magnitude: conditions are "
                          "CLIP embeddings (unit norm) or one-hot classes; normalise it")
    return np.ascontiguousarray(c, dtype=np.float32)


class Sampler:
    """Loads nothing itself: give it an open backend. `sample_*` methods return a SampleBatch."""

    def __init__(self, backend: Backend, config: SamplingConfig | None = None, memory_budget="auto",
                 chunk: int | None = None):
        """memory_budget: bytes (or "8G") the Langevin loop may use, "auto" (memory.default_budget: 80% of
        what the device has free) or None (no plan: every batch in one step graph); chunk: copies per
        energy_grad run, forcing the chunked step (memory.plan)."""
        check_config(config)
        self.backend = backend
        self.info = backend.info
        self.config = config or backend.info.sampling
        self._tokenizer = None
        if memory_budget not in ("auto", None):
            memory_budget = parse_bytes(memory_budget)
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, numbers.Integral) or chunk < 1):
            raise ConfigError(f"chunk must be a whole number of copies >= 1, got {str(chunk)[:100]}")
        self.memory_budget, self.chunk = memory_budget, chunk
        self.memory_model = backend.memory_model()
        if chunk is not None and self.memory_model is not None:  # a bundle without the chunked graphs: now
            plan(self.memory_model, None, 1, 1, chunk)

    def plan(self, batch: int, copies: int) -> Plan:
        """How `batch` rows at A = copies run within the memory budget (memory.plan)."""
        budget = default_budget(self.backend) if self.memory_budget == "auto" else self.memory_budget
        if self.memory_model is None:  # a backend without counts (the torch backend on a pipeline folder)
            return Plan(batch, self.chunk, 0.0, budget, False)
        return plan(self.memory_model, budget, batch, copies, self.chunk)

    @classmethod
    def open(cls, pipeline, backend: str = "auto", device: str = "cpu", precision: str = "fp32",
             preset: str | None = None, threads: int | None = None, **settings) -> "Sampler":
        """Loads a pipeline or bundle folder, or an embedded world by its bare name ("shapes"; a folder of
        that name in the working directory is "./shapes"), once.

        backend: auto | onnxruntime | tensorrt | torch (auto: onnxruntime for a bundle when installed for
        the device). preset: "paper" or "fast" (default: the pipeline's own settings); threads:
        onnxruntime's CPU threads; settings: SamplingConfig fields, e.g. steps=50, copies=16."""
        from .backends import open_backend
        from .paths import pipeline_path
        from .settings import preset as named_preset

        folder = pipeline_path(pipeline)
        be = open_backend(backend, folder, device=device, precision=precision, threads=threads)
        base = named_preset(preset) if preset else be.info.sampling
        return cls(be, base.with_overrides(**settings))

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
        return class_index(self.info.classes or [], cls, self.info.name)

    def conditions(self, queries: list[str]) -> np.ndarray:
        """Prompts (text pipelines) or class names (class pipelines) -> conditions."""
        if self.info.condition == "class":
            return self.encode_classes(queries)
        return self.encode_text(queries)

    # --- sampling ------------------------------------------------------------------------------
    def generate(self, prompts: list[str] | None = None, *, classes: list | None = None,
                 embeddings: np.ndarray | None = None, images: list | None = None, samples: int = 1, seed: int = 0,
                 config: SamplingConfig | None = None, output: str = "numpy") -> SampleBatch:
        """Images for exactly one kind of condition, each sampled `samples` times in one batch:
            prompts     text (text pipelines)
            classes     names or indices (class pipelines)
            embeddings  [N, d_c] conditions computed elsewhere (a CLIP embedding, a one-hot class)
            images      image files or folders (CLIP pipelines; the image translator maps them)
        Row i * samples + j is condition i with seed `seed + j`, as `tr0n-rt sample` does, so an image's
        noise is the same whatever else is in the batch (its pixels: README, "Batch invariance"). output: "numpy", or "device" to keep the images
        where the backend made them (see `sample`). Refused before any work (ConfigError): more than MAX_IMAGES
        (100,000) samples, or conditions x samples, in one call; seeds past 2^64; a config that is not a
        SamplingConfig. Conditions must be finite with every |element| <= MAX_CONDITION (1e4; PromptError)."""
        given = {k: v for k, v in (("prompts", prompts), ("classes", classes), ("embeddings", embeddings),
                                   ("images", images)) if v is not None}
        if len(given) != 1:
            raise ConfigError(f"give exactly one of prompts, classes, embeddings or images (got "
                              f"{', '.join(given) or 'none'})")
        if isinstance(samples, bool) or not isinstance(samples, numbers.Integral) or not 1 <= samples <= MAX_IMAGES:
            raise ConfigError(f"samples must be a whole number >= 1 and <= {MAX_IMAGES:,}, got {str(samples)[:100]}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ConfigError(f"seed must be a whole number >= 0, got {str(seed)[:100]}")
        if int(seed) + int(samples) > noise.SEED_LIMIT:
            raise ConfigError(f"seeds seed .. seed + samples - 1 must be below 2^64, got seed {seed} with {samples} "
                              "samples")
        check_output(output)
        check_config(config)
        (kind, value), = given.items()
        translator = "translator"
        if kind == "embeddings":
            c = check_conditions(value, self.info.cond_dim)  # one embedding [d_c] is one row
            self._check_count(len(c), samples)
        else:
            if isinstance(value, (str, numbers.Integral, os.PathLike)):  # one prompt, class or file
                value = [value]
            elif isinstance(value, bytes) or not isinstance(value, Iterable):
                raise ConfigError(f"{kind} must be a list (or a single one), got {type(value).__name__}")
            else:
                value = list(value)
            if not value:
                raise ConfigError(f"{kind} is empty: give at least one")
            self._check_count(len(value), samples)
            if kind == "prompts":
                c = self.encode_text(value)
            elif kind == "classes":
                c = self.encode_classes(value)
            else:
                c, translator = self.image_conditions(value)[0], self.image_translator
        rows = np.repeat(np.arange(len(c)), samples)
        seeds = [seed + j for _ in range(len(c)) for j in range(samples)]
        return self.sample(c[rows], seeds, config, translator, output)

    @staticmethod
    def _check_count(conditions: int, samples: int) -> None:
        if conditions * samples > MAX_IMAGES:
            raise ConfigError(f"{conditions:,} conditions x {samples:,} samples = {conditions * samples:,} images in one "
                              f"batch, more than {MAX_IMAGES:,}: call generate on fewer at a time")

    def sample(self, conditions: np.ndarray, seeds: list[int], config: SamplingConfig | None = None,
               translator: str = "translator", output: str = "numpy") -> SampleBatch:
        """conditions [B, d_c] float32, one seed per row -> images. translator: the graph that maps
        conditions to the initial mixture (self.image_translator for image conditions).
        output: "numpy" (host float32), or "device": images stay the backend's own array (a torch
        tensor, an ONNX Runtime OrtValue, a cuda-python DeviceArray; numpy from onnxruntime on the CPU),
        all of which export through DLPack (`torch.from_dlpack(batch.images)`) without a copy (an
        OrtValue has __dlpack__ in recent onnxruntime: checked with 1.32). Device work is finished when
        this returns, so any stream may read them."""
        check_output(output)
        check_config(config)
        cfg = config or self.config
        if cfg.aesthetic_weight and not self.info.aesthetic:
            raise ConfigError(f"aesthetic_weight {cfg.aesthetic_weight} needs an aesthetic head, and pipeline "
                              f"{self.info.name!r} has none: add one (pipeline.json 'aesthetic') and re-export")
        conditions = check_conditions(conditions, self.info.cond_dim)
        if isinstance(seeds, str | bytes) or not isinstance(seeds, Sequence | np.ndarray):
            raise ConfigError(f"seeds must be a list of whole numbers, one per condition row, got "
                              f"{type(seeds).__name__}")
        if len(seeds) != conditions.shape[0]:
            raise ShapeError(f"{len(seeds)} seeds for {conditions.shape[0]} conditions: give one seed per row")
        keys = noise.check_seeds(seeds)
        p = self.plan(conditions.shape[0], cfg.copies)
        parts = [self._sample_part(conditions[i:i + p.batch], keys[i:i + p.batch], cfg, translator, output, p.chunk)
                 for i in range(0, conditions.shape[0], p.batch)]
        if len(parts) == 1:
            parts[0].plan = p.as_dict(conditions.shape[0])
            return parts[0]
        return self._joined(parts, cfg, output, p, conditions.shape[0])

    def _joined(self, parts: list[SampleBatch], cfg: SamplingConfig, output: str, p: Plan, rows: int) -> SampleBatch:
        """Sub-batches -> one SampleBatch (device images are joined on the host and moved back)."""
        be = self.backend
        images = np.concatenate([be.to_host(x.images) if output == "device" else x.images for x in parts])
        if output == "device":
            images = be.to_device(images)
            be.synchronize()
        seconds = {k: sum(x.seconds.get(k, 0.0) for x in parts) for k in parts[0].seconds}
        aesthetic = None if parts[0].aesthetic is None else np.concatenate([x.aesthetic for x in parts])
        return SampleBatch(images, np.concatenate([x.latents for x in parts]),
                           np.concatenate([x.energies for x in parts]),
                           np.concatenate([x.energy_trace for x in parts], axis=1), [s for x in parts for s in x.seeds],
                           cfg, seconds, aesthetic, p.as_dict(rows))

    def _sample_part(self, conditions: np.ndarray, keys: np.ndarray, cfg: SamplingConfig, translator: str,
                     output: str, chunk: int | None) -> SampleBatch:
        """One sub-batch of sample(), checked already (keys: its seeds as noise.check_seeds gives them);
        chunk: see StepRunner."""
        be, b, d = self.backend, conditions.shape[0], self.info.latent_dim
        seconds: dict[str, float] = {}

        tick = time.perf_counter()
        if cfg.init == "prior":  # baseline without translator: z0 ~ N(0, I), then Langevin
            means = noise.normal(keys, noise.INIT, 0, (1, d))
            if self.info.latent_bounds is not None:
                means = np.clip(means, -self.info.latent_bounds, self.info.latent_bounds)
            logits = np.zeros_like(means)
        else:
            tr = be.run(translator, {"condition": conditions})
            logits, means, std = (be.to_host(tr[k]) for k in ("logits", "means", "std"))

            aug0 = self._step_noise(keys, 0, cfg.copies, 0)[0] if cfg.candidates > 1 else None

            def score(z: np.ndarray) -> np.ndarray:  # candidates' energies [B], with step 0's augmentations
                return self._energy(z, conditions, aug0, chunk)["energy"]

            means, logits = self._initial_mixture(cfg, keys, logits, means, std, score)
        seconds["translate"] = time.perf_counter() - tick

        tick = time.perf_counter()
        trace = np.zeros((cfg.steps, b), dtype=np.float32)
        if cfg.steps:
            c_dev = be.to_device(conditions)
            zeros = np.zeros_like(means)
            state = {"means": means, "logits": logits, "velocity": zeros, "adam_m": zeros, "adam_v": zeros,
                     "step": np.zeros(1, np.float32)}
            state = {k: be.to_device(v) for k, v in state.items()}
            fixed = {"condition": c_dev, **{n: be.to_device(v) for n, v in cfg.hparams().items()}}
            if self.info.aesthetic:
                fixed["aesthetic_weight"] = be.to_device(np.array([cfg.aesthetic_weight], np.float32))
            energies = []
            step = StepRunner(be, chunk, fixed)
            for t in range(cfg.steps):
                aug, sgld = self._step_noise(keys, t, cfg.copies, means.shape[1])
                state, e = step(state, aug, sgld)
                energies.append(e)
            trace = np.stack([be.to_host(e) for e in energies]).astype(np.float32)
            means, logits = be.to_host(state["means"]), be.to_host(state["logits"])
            latents = noise.mix(logits, means)
        else:
            latents = means[:, 0]
        be.synchronize()
        seconds["langevin"] = time.perf_counter() - tick

        final, aesthetic = np.full(b, np.nan, dtype=np.float32), None
        if cfg.steps:
            tick = time.perf_counter()
            e = self._energy(latents, conditions, self._step_noise(keys, cfg.steps, cfg.copies, 0)[0], chunk)
            final, aesthetic = e["energy"], e.get("aesthetic")
            seconds["final_energy"] = time.perf_counter() - tick

        tick = time.perf_counter()
        images = be.run("generator", {"latent": latents})["images"]
        if output == "numpy":
            images = be.to_host(images).astype(np.float32)
        else:
            be.synchronize()
        seconds["decode"] = time.perf_counter() - tick
        return SampleBatch(images, latents, final, trace, [int(s) for s in keys], cfg, seconds, aesthetic)

    def _energy(self, latents: np.ndarray, conditions: np.ndarray, aug: np.ndarray, chunk: int | None) -> dict:
        """The energy graph (or its chunks) on latents [B, D] -> host float32 "energy" [B] (and "aesthetic")."""
        be = self.backend
        e = (be.run("energy", {"latent": latents, "condition": conditions, "aug_noise": aug}) if chunk is None
             else chunked_energy(be, latents, conditions, aug, chunk))
        return {k: be.to_host(v).astype(np.float32) for k, v in e.items() if k in ("energy", "aesthetic")}

    def _initial_mixture(self, cfg, keys, logits, means, std, score):
        """Translator outputs -> the state's means and per-dimension logits, [B, K', D] each.

        mixture: all K means, logits copied per dimension. T = 0 keeps only the most probable mean
        (the first of equals; the reference's translator-only sample). sample: K' = 1, z0 from
        sample_start; score(z [B, D]) -> energies [B] ranks its candidates."""
        b, k, d = means.shape
        if cfg.mode == "mixture":
            if cfg.steps == 0:
                best = logits.argmax(axis=1)
                return means[np.arange(b), best][:, None].copy(), np.zeros((b, 1, d), np.float32)
            return means.astype(np.float32), np.repeat(logits[:, :, None], d, axis=2).astype(np.float32)
        z0 = sample_start(cfg, keys, logits, means, std, self.info.latent_bounds, score)
        return z0[:, None], np.zeros((b, 1, d), np.float32)

    def _step_noise(self, keys, t: int, copies: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Step t's augmentation numbers [B, max(A, 1), 8] (A = 0: the identity copy) and SGLD noise [B, K, D]."""
        b, d = len(keys), self.info.latent_dim
        aug = (noise.uniform(keys, noise.AUGMENT, t, (copies, AUG_DIM)) if copies
               else np.broadcast_to(np.asarray(IDENTITY_AUG, np.float32), (b, 1, AUG_DIM)).copy())
        return aug, noise.normal(keys, noise.SGLD, t, (k, d))


def class_index(names: list[str], cls: str | int, pipeline: str) -> int:
    """A class by name ("7", "digit 7", "Class 7") or index -> its index in names, else PromptError."""
    key = str(cls).strip().lower()
    for prefix in ("digit ", "class "):
        key = key.removeprefix(prefix)
    if key in names:
        return names.index(key)
    raise PromptError(f"unknown class {cls!r} for pipeline {pipeline!r}; known: {', '.join(names)}")


def sample_start(cfg: SamplingConfig, keys: np.ndarray, logits: np.ndarray, means: np.ndarray, std: np.ndarray,
                 bounds: float | None, score) -> np.ndarray:
    """Sample mode's z0 [B, D] from the translator's logits [B, K], means [B, K, D] and std [D].

    Candidate j (0 .. cfg.candidates - 1), per row: k_j = the component picked by uniform(COMPONENT, j);
        z_j = (means[k_j] + std * normal(INIT, j)) + start_noise * normal(START, j)    (float32 operations)
    clamped to [-bounds, bounds] where the latent has bounds. One candidate: z_0 (the paper's z0 ~ q(z | c)
    when start_noise = 0). Several: the candidate of lowest score(z_j) [B] (ties and NaN: the first finite
    lowest; every score NaN: candidate 0)."""
    b, _, d = means.shape
    probs = noise.softmax(logits, axis=1)
    s = np.float32(cfg.start_noise)
    draws = []
    for j in range(cfg.candidates):
        comp = noise.pick_component(probs, noise.uniform(keys, noise.COMPONENT, j, (1,))[:, 0])
        z = means[np.arange(b), comp].astype(np.float32) + np.asarray(std, np.float32) * noise.normal(keys, noise.INIT, j, (d,))
        if s:  # start_noise = 0 draws nothing: z is the paper's z0 ~ q(z | c), bit for bit
            z = z + s * noise.normal(keys, noise.START, j, (d,))
        if bounds is not None:
            z = np.clip(z, np.float32(-bounds), np.float32(bounds))
        draws.append(z.astype(np.float32))
    if len(draws) == 1:
        return draws[0]
    energies = np.stack([score(z) for z in draws])  # [candidates, B]
    best = np.where(np.isnan(energies), np.inf, energies).argmin(axis=0)
    return np.stack(draws)[best, np.arange(b)]


def sample_queries(sampler: Sampler, queries: list[str], samples: int, seed: int, batch: int):
    """Samples every query `samples` times in batches; yields (rows, SampleBatch)."""
    conditions = sampler.conditions(queries) if queries else None
    yield from sample_rows(sampler, queries, conditions, samples, seed, batch)


def sample_rows(sampler: Sampler, labels: list, conditions, samples: int, seed: int, batch: int,
                translator: str = "translator"):
    """Samples every condition row `samples` times in batches (sample j with seed SEED + j); yields
    (rows, SampleBatch) with rows (label, j, seed, condition index)."""
    rows = [(label, j, seed + j, i) for i, label in enumerate(labels) for j in range(samples)]
    for start in range(0, len(rows), batch):
        part = rows[start:start + batch]
        yield part, sampler.sample(conditions[[i for *_, i in part]], [s for _, _, s, _ in part],
                                   translator=translator)
