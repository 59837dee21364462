"""The own-models road on the command line: create -> pairs -> train -> (export, build, sample), and info.

    tr0n-rt create DIR --generator stylegan2 --generator-weights ffhq.pkl --clip ViT-B-32 --clip-weights clip.bin
    tr0n-rt pairs DIR [--count N] [--batch B] [--device cuda] [--shards 0:64]
    tr0n-rt train --pipeline DIR [--image] [--device cuda]
    tr0n-rt import-translator DIR reference_translator.pt
    tr0n-rt info DIR
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .cli_args import MAX_BATCH, MAX_PAIRS, MAX_SHARD, positive_float, whole_number
from .errors import ConfigError
from .extras import build_time
from .info import describe, render


def shard_range(text: str) -> tuple[int, int]:
    """"A:B" -> (A, B), shards A <= i < B."""
    start, sep, stop = text.partition(":")
    try:
        a, b = int(start), int(stop)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shard range START:STOP, e.g. 0:64") from None
    if not sep or a < 0 or b <= a:
        raise argparse.ArgumentTypeError(f"{text!r}: give START:STOP with 0 <= START < STOP")
    return a, b


def json_file(text: str) -> dict:
    """A JSON object, inline or from a file."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        try:
            value = json.loads(Path(text).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            raise argparse.ArgumentTypeError(f"{text!r} is neither a JSON object nor a file holding one ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object")
    return value


def cmd_create(args) -> int:
    create = build_time("create", "creating a pipeline")
    recipe, sampling = create.parse_settings(args.set or [])
    tick = time.perf_counter()
    out = create.create_pipeline(args.folder, args.generator, args.generator_weights, clip=args.clip,
                                 clip_weights=args.clip_weights, clip_config=args.clip_config,
                                 generator_config=args.generator_config, name=args.name, recipe=recipe,
                                 sampling=sampling)
    print(f"pipeline written to {out} in {time.perf_counter() - tick:.0f} s")
    print(render(describe(out)))
    return 0


def cmd_pairs(args) -> int:
    workflow = build_time("workflow", "making pairs")
    tick = time.perf_counter()
    spec = workflow.make_pipeline_pairs(args.folder, count=args.count, batch_size=args.batch, device=args.device,
                                        shards=args.shards, shard_size=args.shard_size, captioner=args.captioner,
                                        captioner_config=args.captioner_config, ray=args.ray, workers=args.workers,
                                        cpus_per_worker=args.cpus_per_worker)
    print(f"pairs in {args.folder / 'pairs'}: {spec.count} ({spec.num_shards} shards), "
          f"{time.perf_counter() - tick:.0f} s this run")
    print(f"next: {describe(args.folder)['next']}")
    return 0


def cmd_train_pipeline(args) -> int:
    workflow = build_time("workflow", "training")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    tick = time.perf_counter()
    result = workflow.train_pipeline(args.pipeline, image=args.image, device=args.device, epochs=args.epochs)
    which = "image translator" if args.image else "translator"
    print(f"{which} of {args.pipeline} trained in {time.perf_counter() - tick:.0f} s this run; best validation NLL "
          f"{result.get('best_validation_nll')} (epoch {result.get('best_epoch')})")
    print(f"next: {describe(args.pipeline)['next']}")
    return 0


def cmd_import_translator(args) -> int:
    workflow = build_time("workflow", "importing a translator")
    workflow.import_translator(args.folder, args.checkpoint, image=args.image)
    print(f"translator imported into {args.folder}\nnext: {describe(args.folder)['next']}")
    return 0


def cmd_info(args) -> int:
    info = describe(args.folder)
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("create", help="a pipeline folder from your generator and CLIP checkpoints",
                       description="Convert a generator checkpoint and open_clip weights into a pipeline folder "
                                   "with the reference's recipe for that family (every field can be --set).")
    p.add_argument("folder", type=Path, help="new pipeline folder (must not exist, or be empty)")
    p.add_argument("--generator", required=True, choices=["stylegan2", "biggan", "biggan_deep", "dcgan"],
                   help="generator family: stylegan2 (rosinality .pt or NVIDIA .pkl), biggan (BigGAN-PyTorch), "
                        "biggan_deep (pytorch-pretrained-BigGAN), dcgan (safetensors + --generator-config)")
    p.add_argument("--generator-weights", type=Path, required=True, help="the generator checkpoint file")
    p.add_argument("--generator-config", type=json_file, default=None,
                   help="JSON (inline or a file): loader options, or DCGAN's architecture")
    p.add_argument("--clip", default=None, help="open_clip architecture name, e.g. ViT-B-32")
    p.add_argument("--clip-config", type=json_file, default=None,
                   help="a custom open_clip model config (open_clip.CLIP keyword arguments) instead of --clip")
    p.add_argument("--clip-weights", type=Path, default=None, help="open_clip weights file (never downloaded)")
    p.add_argument("--name", default=None, help="pipeline name (default: the folder's)")
    p.add_argument("--set", nargs="+", default=None, metavar="KEY=VALUE",
                   help="override recipe fields (pairs, num_components, condition_noise, epochs, batch_size, lr, "
                        "mean_bound, ...) or sampling fields (steps, copies, latent_lr, ...)")
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("pairs", help="synthetic pairs z, c = f(G(z)) for a pipeline's translator",
                       description="Make the recipe's synthetic pairs in FOLDER/pairs, in shards that resume "
                                   "where a run stopped; a shard range lets several processes split one run.")
    p.add_argument("folder", type=Path, help="pipeline folder (made by tr0n-rt create)")
    p.add_argument("--count", type=whole_number(1, MAX_PAIRS), default=None,
                   help=f"pairs, 1 to {MAX_PAIRS} (default: the recipe's)")
    p.add_argument("--batch", type=whole_number(1, MAX_BATCH), default=64,
                   help=f"images per generator batch, 1 to {MAX_BATCH} (default: 64)")
    p.add_argument("--shard-size", type=whole_number(1, MAX_SHARD), default=4096,
                   help=f"pairs per shard file, 1 to {MAX_SHARD} (default: 4096)")
    p.add_argument("--shards", type=shard_range, default=None, metavar="START:STOP",
                   help="make only shards START <= i < STOP (each depends only on the seed and i)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--captioner", default=None, help="caption pairs: c = the text embedding of a caption of G(z), "
                                                     "by this captioner (blip, shapes_attributes)")
    p.add_argument("--captioner-config", type=json_file, default=None,
                   help="the captioner's settings as JSON, e.g. '{\"model\": \"/models/blip-base\"}' (local files only)")
    r = p.add_argument_group("on a Ray cluster (extra: serve)")
    r.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="make the shards on a Ray cluster's workers and write them here: auto (the cluster `ray start` "
                        "made), HOST:PORT, or local (a Ray instance on this machine); every node must see FOLDER at "
                        "the same path")
    r.add_argument("--workers", type=whole_number(1, 4096), default=None,
                   help="Ray workers, each loading the models once (default: as many as the cluster has room for)")
    r.add_argument("--cpus-per-worker", type=positive_float, default=1.0,
                   help="CPUs Ray reserves per worker, fractions allowed (default: 1)")
    p.set_defaults(func=cmd_pairs)

    p = sub.add_parser("import-translator", help="a translator trained with the reference code, into a pipeline",
                       description="Import a TR0N reference translator checkpoint (w_*/z_* keys) after checking "
                                   "its sizes against the pipeline's generator and CLIP.")
    p.add_argument("folder", type=Path, help="pipeline folder")
    p.add_argument("checkpoint", type=Path, help="the reference's translator checkpoint")
    p.add_argument("--image", action="store_true", help="as the image translator")
    p.set_defaults(func=cmd_import_translator)

    p = sub.add_parser("info", help="what a pipeline or bundle holds, and the next step",
                       description="Models, recipe, pairs, translators, graphs and engines of a folder, read from "
                                   "its JSON files (nothing is loaded), and the command that comes next.")
    p.add_argument("folder", type=Path, help="pipeline or bundle folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)


def check_train_args(args) -> None:
    """`train` takes --world (rebuild a world) or --pipeline (train a created pipeline's translator)."""
    if (args.world is None) == (args.pipeline is None):
        raise ConfigError("give --world NAME (rebuild an embedded world) or --pipeline DIR (train the translator "
                          "of a pipeline made by tr0n-rt create)")
    other = ({"--image": args.image, "--device": args.device != "cpu", "--epochs": args.epochs is not None}
             if args.world is not None else
             {"--out": args.out is not None, "--work": args.work is not None, "--seed": args.seed is not None})
    given = [flag for flag, used in other.items() if used]
    if given:
        mode = "--world" if args.world is not None else "--pipeline"
        raise ConfigError(f"{', '.join(given)} do(es) not apply with {mode}; see `tr0n-rt train --help`")
