"""What the subcommands share: argument groups and checks, and the pipeline they open."""
from __future__ import annotations

import argparse
from pathlib import Path

from .errors import Tr0nError


def whole_number(minimum: int):
    """An argparse type: an int >= minimum, refused with argparse's usage message otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"whole number >= {minimum}"
    return parse


def add_pipeline_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pipeline")
    g.add_argument("--world", default=None, help="embedded world to use: shapes (text, default) or digits (classes)")
    g.add_argument("--pipeline", type=Path, default=None, help="pipeline folder (with pipeline.json) instead of a world")
    g.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "tensorrt", "torch"],
                   help="engine that runs the graphs; auto: onnxruntime when the folder holds a bundle "
                        "(manifest.json) and onnxruntime is installed, else torch (default: auto)")
    g.add_argument("--precision", default="fp32", choices=["fp32", "fp16"],
                   help="which bundle graphs the onnxruntime backend runs (default: fp32)")
    g.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu; the tensorrt backend needs cuda)")
    g.add_argument("--threads", type=whole_number(1), default=None,
                   help="onnxruntime's CPU threads (default: one per core; fewer when the cores are shared)")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (defaults: the pipeline's own settings)")
    g.add_argument("--preset", choices=["paper", "fast"], default=None,
                   help="paper: the reference's T=100, A=50; fast: T=25, A=8")
    g.add_argument("--mode", choices=["mixture", "sample"], default=None,
                   help="mixture: refine all K translator means (reference code); sample: z0 ~ q(z|c), then SGLD")
    g.add_argument("--steps", type=whole_number(0), default=None, help="Langevin steps T; 0 = translator only")
    g.add_argument("--copies", type=whole_number(0), default=None, help="augmented copies A in the energy; 0 = none")
    g.add_argument("--latent-lr", type=float, default=None, help="SGLD step size on the means")
    g.add_argument("--momentum", type=float, default=None, help="SGLD momentum")
    g.add_argument("--noise-std", type=float, default=None, help="SGLD noise std added after each step")
    g.add_argument("--logits-lr", type=float, default=None, help="Adam step size on the mixture logits")
    g.add_argument("--aesthetic-weight", type=float, default=None,
                   help="alpha of the aesthetic term in the energy (pipelines with an aesthetic head; default 0)")
    g.add_argument("--samples", type=whole_number(1), default=1, help="images per prompt or class (default: 1)")
    g.add_argument("--seed", type=whole_number(0), default=0, help="base seed (default: 0)")
    g.add_argument("--batch", type=whole_number(1), default=16, help="images per backend batch (default: 16)")


def resolve_pipeline(args) -> Path:
    from .paths import DEFAULT_WORLD, world_dir

    if args.pipeline is not None and args.world is not None:
        raise Tr0nError("give --world or --pipeline, not both")
    return args.pipeline if args.pipeline is not None else world_dir(args.world or DEFAULT_WORLD)


def sampling_config(args, base):
    from .settings import preset

    cfg = preset(args.preset) if args.preset else base
    return cfg.with_overrides(mode=args.mode, steps=args.steps, copies=args.copies, latent_lr=args.latent_lr,
                              momentum=args.momentum, noise_std=args.noise_std, logits_lr=args.logits_lr,
                              aesthetic_weight=args.aesthetic_weight)


def open_sampler(args):
    from .backends import open_backend
    from .sampler import Sampler

    folder = resolve_pipeline(args)
    backend = open_backend(args.backend, folder, device=args.device, precision=args.precision, threads=args.threads)
    return folder, Sampler(backend, sampling_config(args, backend.info.sampling))


