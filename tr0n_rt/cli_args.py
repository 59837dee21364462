"""What the subcommands share: argument groups and checks, and the pipeline they open."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from .errors import ConfigError, Tr0nError
from .settings import MAX_CANDIDATES, MAX_COPIES, MAX_STEPS, RANGES, range_in_words

# Upper bounds of the command line's numbers, refused at parse time. The sampling settings' ranges (steps,
# copies, learning rates, ...) are settings.RANGES, shared with the Python API. BATCH and COMPONENTS are the
# exported graphs' dynamic-axis maxima (export/graphs.py).
MAX_COMPONENTS = 1024  # mixture sizes K (tr0n-rt build): the graphs' components axis
MAX_BATCH = 4096  # images per backend batch: the graphs' batch axis
MAX_PAIRS = 10**9  # synthetic pairs (`pairs --count`): the recipe makes 1M, 4.1 GB on disk
MAX_SHARD = 1 << 20  # pairs per shard file
MAX_SAMPLES = 100_000  # images per prompt or class
MAX_THREADS = 1024  # CPU threads
MAX_SEED = 2**64 - 1  # the noise generator's seeds are 64-bit (docs/bundle-format.md)
MAX_INTERPOLATE = 1000  # conditions along an interpolation
MAX_REPEATS = 1000  # bench: warm-up and timed calls per configuration
MAX_TIMEOUT_S = 7 * 86400.0  # bench: seconds per configuration
MAX_EPOCHS = 100_000  # translator training epochs
MAX_OPT_LEVEL = 5  # TensorRT builder optimisation level
MAX_WORKSPACE_MIB = 2**20  # TensorRT builder workspace (1 TiB)


def whole_number(minimum: int, maximum: int | None = None):
    """An argparse type: an int in [minimum, maximum] (no maximum: >= minimum), refused with argparse's
    usage message and the allowed range otherwise."""
    allowed = f"{minimum} to {maximum}" if maximum is not None else f">= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number (allowed: {allowed})") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}" +
                                             (f" (allowed: {allowed})" if maximum is not None else ""))
        if maximum is not None and value > maximum:
            shown = str(value) if value < 10**30 else f"a number of {len(str(value))} digits"
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {shown} (allowed: {allowed})")
        return value

    parse.__name__ = f"whole number {allowed}"
    return parse


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 and <= 1e6 (CPU and GPU reservations, timeouts in seconds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number") from None
    if not 0 < value <= 1e6:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be > 0 and <= 1e6, got {text[:40]}")
    return value


def seconds(maximum: float):
    """An argparse type: a finite number of seconds > 0 and <= maximum (refuses 0, negatives, nan, inf)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number of seconds") from None
        if not (math.isfinite(value) and 0 < value <= maximum):
            raise argparse.ArgumentTypeError(f"must be a number of seconds > 0 and <= {maximum:g}, got {text[:40]}")
        return value

    parse.__name__ = "seconds"
    return parse


def setting(name: str):
    """An argparse type for a float sampling setting: a finite number in settings.RANGES[name]."""
    lo, hi = RANGES[name]

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number ({range_in_words(name)})") from None
        if not (math.isfinite(value) and lo <= value <= hi):
            raise argparse.ArgumentTypeError(f"must be {range_in_words(name)}, got {text[:40]}")
        return value

    parse.__name__ = f"number {range_in_words(name)}"
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
    g.add_argument("--threads", type=whole_number(1, MAX_THREADS), default=None,
                   help="onnxruntime's CPU threads (default: one per core; fewer when the cores are shared)")
    add_memory_args(g)


def add_memory_args(g) -> None:
    """--memory-budget and --chunk (sample, eval, bench)."""
    g.add_argument("--memory-budget", type=memory_budget, default="auto", metavar="SIZE",
                   help="memory the Langevin loop may use, e.g. 8G: the batch is split and the copies chunked to "
                        "fit (tr0n_rt/memory.py); auto: 80%% of the device's free memory; none: no plan "
                        "(default: auto)")
    g.add_argument("--chunk", type=whole_number(1, MAX_COPIES), default=None, metavar="M",
                   help="run the step in chunks of M copies (default: as the memory plan says)")


def memory_size(text: str) -> int:
    """A size: 8G, 512M, 1.5GiB (memory.parse_bytes) -> bytes."""
    from .memory import parse_bytes

    try:
        return parse_bytes(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def memory_budget(text: str):
    """--memory-budget: "auto", "none" or a size."""
    word = text.strip().lower()
    if word in ("auto", "none"):
        return None if word == "none" else "auto"
    return memory_size(text)


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (defaults: the pipeline's own settings)")
    g.add_argument("--preset", choices=["paper", "fast"], default=None,
                   help="paper: the reference's T=100, A=50; fast: T=25, A=8")
    g.add_argument("--mode", choices=["mixture", "sample"], default=None,
                   help="mixture: refine all K translator means (reference code); sample: z0 ~ q(z|c), then SGLD")
    g.add_argument("--steps", type=whole_number(0, MAX_STEPS), default=None,
                   help=f"Langevin steps T, 0 to {MAX_STEPS}; 0 = translator only")
    g.add_argument("--copies", type=whole_number(0, MAX_COPIES), default=None,
                   help=f"augmented copies A in the energy, 0 to {MAX_COPIES}; 0 = none")
    g.add_argument("--latent-lr", type=setting("latent_lr"), default=None, help="SGLD step size on the means")
    g.add_argument("--momentum", type=setting("momentum"), default=None, help="SGLD momentum")
    g.add_argument("--noise-std", type=setting("noise_std"), default=None, help="SGLD noise std added after each step")
    g.add_argument("--logits-lr", type=setting("logits_lr"), default=None, help="Adam step size on the mixture logits")
    g.add_argument("--candidates", type=whole_number(1, MAX_CANDIDATES), default=None,
                   help=f"sample mode: draws of z0 per image, 1 to {MAX_CANDIDATES}, the lowest energy starts Langevin "
                        "(each costs one energy evaluation; 1 = the paper's z0 ~ q(z|c))")
    g.add_argument("--start-noise", type=setting("start_noise"), default=None,
                   help="sample mode: std of extra noise on z0, in units of the prior's (0 = the paper's z0 ~ q(z|c))")
    g.add_argument("--aesthetic-weight", type=setting("aesthetic_weight"), default=None,
                   help="alpha of the aesthetic term in the energy (pipelines with an aesthetic head; default 0)")
    g.add_argument("--samples", type=whole_number(1, MAX_SAMPLES), default=1,
                   help=f"images per prompt or class, 1 to {MAX_SAMPLES} (default: 1)")
    g.add_argument("--seed", type=whole_number(0, MAX_SEED), default=0, help="base seed, 0 to 2^64 - 1 (default: 0)")
    g.add_argument("--batch", type=whole_number(1, MAX_BATCH), default=16,
                   help=f"images per backend batch, 1 to {MAX_BATCH} (default: 16)")


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
                              aesthetic_weight=args.aesthetic_weight, candidates=args.candidates,
                              start_noise=args.start_noise)


def pipeline_folder(args) -> Path:
    """The folder the command reads (--pipeline, or the --world's), checked to exist and to hold a
    bundle or a pipeline; loads nothing."""
    from .backends import check_pipeline_dir

    folder = resolve_pipeline(args)
    return check_pipeline_dir(folder, f"--pipeline {folder}" if args.pipeline is not None else f"world folder {folder}")


def check_seed_range(args) -> None:
    """Sample j of a prompt uses seed SEED + j: the last one must still be a 64-bit seed."""
    last = args.seed + args.samples - 1
    if last > MAX_SEED:
        raise ConfigError(f"--seed {args.seed} with --samples {args.samples} needs seeds up to {last}, past the "
                        f"largest seed 2^64 - 1: give --seed <= {MAX_SEED - args.samples + 1}")


def open_sampler(args, folder: Path | None = None):
    """Opens the command's pipeline (folder: already resolved by pipeline_folder) with its backend and
    sampling settings."""
    from .backends import open_backend
    from .sampler import Sampler

    folder = pipeline_folder(args) if folder is None else folder
    backend = open_backend(args.backend, folder, device=args.device, precision=args.precision, threads=args.threads)
    sampler = Sampler(backend, sampling_config(args, backend.info.sampling),
                      memory_budget=getattr(args, "memory_budget", "auto"), chunk=getattr(args, "chunk", None))
    if isinstance(getattr(args, "batch", None), int):  # a budget nothing fits: refused before any sampling
        sampler.plan(args.batch, sampler.config.copies)
    return folder, sampler


