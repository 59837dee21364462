"""Rebuilds an embedded world from scratch: data -> models -> synthetic pairs -> translator.

    tr0n-rt train --world shapes [--out engines/shapes]
The world package trains its own G / f / judge (build_models); this module adds TR0N's generic
part (pairs, translator) and writes pipeline.json with the wall time of each stage.
"""
from __future__ import annotations

import importlib
import platform
import time
from pathlib import Path

import torch

from tr0n_rt.atomic import write_bytes
from tr0n_rt.settings import SamplingConfig

from ..augment import AugmentConfig
from ..pairs import load_pairs, make_pairs
from ..pipeline import load_models, write_pipeline
from ..train_translator import TrainConfig, train_translator
from ..translator import TranslatorConfig
from . import WORLDS, world_module

# Translator training on ~20k pairs; the reference's batch 16 / lr 1e-4 / 10 epochs is sized for 1M pairs.
WORLD_TRAIN = TrainConfig(epochs=30, batch_size=128, lr=1e-3, noise_mode="relative")

# Sampling defaults shipped with the worlds: the `fast` preset's T and A, in sample mode with two candidate
# starts (the lower energy kept): about as right as the reference code's mixture mode on under-specified
# prompts and 4.5 times as diverse in what they leave open, 0-2 points less right on fully named prompts
# (benchmarks/RESULTS.md, "Right and diverse"). `--mode mixture` is the reference code's sampling.
WORLD_SAMPLING = SamplingConfig(mode="sample", steps=25, copies=8, candidates=2)


def build_world(name: str, out_dir: str | Path, seed: int = 0, work_dir: str | Path | None = None,
                progress: bool = True, threads: int | None = None) -> dict:
    """Builds world `name` into out_dir; returns the per-stage wall times in seconds."""
    world_module(name)  # validates the name
    build = importlib.import_module(f"{__package__}.{name}.build")
    info = build.WORLD_INFO
    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(work_dir) if work_dir else out_dir.parent / ".cache" / f"{name}-pairs-seed{seed}"
    times = {}

    tick = time.perf_counter()
    torch.manual_seed(seed)
    parts = build.build_models(out_dir, seed=seed, progress=progress)
    parts["name"] = name
    times["models"] = time.perf_counter() - tick

    tick = time.perf_counter()
    g, f = load_models(out_dir, parts)
    tr = info["translator"]
    make_pairs(g, f, tr["n_pairs"], work_dir, seed=seed, progress=progress)
    times["pairs"] = time.perf_counter() - tick

    tick = time.perf_counter()
    z, c, _ = load_pairs(work_dir)
    config = TranslatorConfig(cond_dim=f.cond_dim, latent_dim=g.latent.dim, num_components=tr["num_components"])
    train = TrainConfig(**{**WORLD_TRAIN.__dict__, "condition_noise": tr["condition_noise"], "seed": seed})
    translator, history = train_translator(z, c, config, train, progress=progress)
    times["translator"] = time.perf_counter() - tick

    tick = time.perf_counter()
    parts.update(build_image_features(name, out_dir, f, z, c, config, seed, progress))
    times["image_features"] = time.perf_counter() - tick

    prompts = parts.pop("prompts", None)
    if prompts:
        write_bytes(out_dir / "prompts.txt", ("\n".join(prompts) + "\n").encode())
    write_pipeline(out_dir, parts, translator, AugmentConfig(), WORLD_SAMPLING, extra={
        "build": {"seed": seed, "seconds": {k: round(v, 1) for k, v in times.items()},
                  "translator_nll_per_epoch": [round(h, 3) for h in history],
                  "torch": torch.__version__, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads"},
    })
    return times


def build_image_features(name: str, out_dir: Path, f, z, c, config: TranslatorConfig, seed: int,
                         progress: bool = True) -> dict:
    """The parts behind image conditioning and the aesthetic term, for CLIP worlds: an image translator
    trained on the same pairs without condition noise (c is then exactly an image embedding, as at
    sampling time), and the world's aesthetic head if it has one. Returns pipeline.json entries."""
    if f.kind != "clip":
        return {}
    train = TrainConfig(**{**WORLD_TRAIN.__dict__, "condition_noise": 0.0, "seed": seed})
    image_translator, history = train_translator(z, c, config, train, progress=progress)
    out = {"image_translator": image_translator.save(out_dir, "image_translator")}
    build = importlib.import_module(f"{__package__}.{name}.build")
    if hasattr(build, "build_aesthetic"):
        out["aesthetic"] = build.build_aesthetic(out_dir, f, seed)
    return out


def add_image_features(name: str, out_dir: str | Path, seed: int = 0, work_dir: str | Path | None = None,
                       progress: bool = True) -> dict:
    """Adds image_translator and aesthetic to an already built world (the same stage build_world runs,
    on the same pairs, without retraining its models); rewrites pipeline.json."""
    from tr0n_rt.atomic import write_json
    from tr0n_rt.pipeline_json import read_pipeline_json

    out_dir = Path(out_dir)
    spec = read_pipeline_json(out_dir)
    work_dir = Path(work_dir) if work_dir else out_dir.parent / ".cache" / f"{name}-pairs-seed{seed}"
    g, f = load_models(out_dir, spec)
    make_pairs(g, f, importlib.import_module(f"{__package__}.{name}.build").WORLD_INFO["translator"]["n_pairs"],
               work_dir, seed=seed, progress=progress)
    z, c, _ = load_pairs(work_dir)
    tick = time.perf_counter()
    parts = build_image_features(name, out_dir, f, z, c, TranslatorConfig(**spec["translator"]["config"]), seed, progress)
    spec.update(parts)
    spec.setdefault("build", {}).setdefault("seconds", {})["image_features"] = round(time.perf_counter() - tick, 1)
    write_json(out_dir / "pipeline.json", spec)
    return parts


__all__ = ["WORLDS", "build_world", "add_image_features"]
