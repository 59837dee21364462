"""What the own-models road costs at real size: synthetic pairs per second (G + CLIP image encoder) and
translator training seconds per epoch per 100k pairs, with random weights (speed does not depend on
their values), projected to the reference's 1M pairs and 10 epochs.

    python benchmarks/workflow_speed.py --out benchmarks/workflow-speed-vitb32-stylegan2-256.json
Pairs: a warm-up batch, then --pairs pairs at each --batch, timed by make_pairs itself (one shard each).
Training: fit_translator on --train-pairs random pairs of the pipeline's widths, the reference's batch 16,
timed per optimizer step over the whole run (the validation shard excluded).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from tr0n_rt.atomic import write_json
from tr0n_rt.bench import cpu_model
from tr0n_rt.export.checkpoints import save_state
from tr0n_rt.export.pairs import PairsSpec, make_pairs, pairs_bytes, shard_path
from tr0n_rt.export.train_translator import TrainConfig, fit_translator
from tr0n_rt.export.translator import TranslatorConfig
from tr0n_rt.export.pipeline import load_models

sys.path.insert(0, str(Path(__file__).resolve().parent))
from random_pipeline import build_random_pipeline  # noqa: E402

MILLION = 1_000_000


def time_pairs(folder: Path, pairs: int, batches: list[int], device: str) -> list[dict]:
    spec = json.loads((folder / "pipeline.json").read_text())
    g, f = load_models(folder, spec)  # make_pairs moves them to `device`
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        make_pairs(g, f, batches[0], Path(tmp) / "warmup", batch_size=batches[0], device=device, progress=False)
        for b in batches:
            tick = time.perf_counter()
            make_pairs(g, f, pairs, Path(tmp) / f"b{b}", batch_size=b, shard_size=pairs, device=device, progress=False)
            seconds = time.perf_counter() - tick
            rows.append({"batch": b, "pairs": pairs, "seconds": round(seconds, 2), "pairs_per_s": round(pairs / seconds, 3),
                         "hours_for_1M": round(MILLION / (pairs / seconds) / 3600, 1)})
            print(f"pairs, batch {b}: {pairs / seconds:.3f} pairs/s ({rows[-1]['hours_for_1M']} h for 1M)", flush=True)
    return rows, g.latent.dim, f.cond_dim


def time_training(latent_dim: int, cond_dim: int, pairs: int, device: str) -> dict:
    shard = 4096
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pairs"
        folder.mkdir()
        spec = PairsSpec(pairs + shard, shard, 0, latent_dim, cond_dim, "random", "random")
        (folder / "pairs.json").write_text(json.dumps(spec.to_index()))
        g = torch.Generator().manual_seed(0)
        for i in range(spec.num_shards):  # unit-norm c as CLIP gives; the last shard is held out
            c = torch.nn.functional.normalize(torch.randn(shard, cond_dim, generator=g), dim=1)
            save_state({"z": torch.randn(shard, latent_dim, generator=g), "c": c}, shard_path(folder, i))
        train = TrainConfig(epochs=1, batch_size=16, lr=1e-4, condition_noise=0.2)
        config = TranslatorConfig(cond_dim=cond_dim, latent_dim=latent_dim, num_components=10)
        tick = time.perf_counter()
        result = fit_translator(folder, Path(tmp) / "train", config, train, device=device, progress=False)
        seconds = result["history"][0]["seconds"] if "seconds" in result["history"][0] else time.perf_counter() - tick
    steps = -(-result["pairs"]["train_rows"] // 16)
    per_100k = seconds / result["pairs"]["train_rows"] * 100_000
    out = {"train_pairs": result["pairs"]["train_rows"], "steps": steps, "seconds": round(seconds, 1),
           "seconds_per_step": round(seconds / steps, 4), "minutes_per_epoch_per_100k": round(per_100k / 60, 2),
           "hours_for_10_epochs_on_1M": round(per_100k * 10 * 10 / 3600, 1)}
    print(f"training: {out['minutes_per_epoch_per_100k']} min per epoch per 100k pairs "
          f"({out['hours_for_10_epochs_on_1M']} h for the reference's 10 epochs on 1M)", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--clip", default="ViT-B-32")
    ap.add_argument("--generator", default="stylegan2")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--batch", type=int, nargs="+", default=[16])
    ap.add_argument("--train-pairs", type=int, default=8192)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_random_pipeline(Path(tmp) / "pipe", args.clip, args.generator, args.resolution)
        pairs, d, d_c = time_pairs(folder, args.pairs, args.batch, args.device)
    result = {"pipeline": f"{args.clip} + {args.generator}-{args.resolution}, random weights", "device": args.device,
              "machine": {"cpu": cpu_model(), "threads": torch.get_num_threads(), "python": platform.python_version(),
                          "torch": torch.__version__},
              "pairs": pairs, "bytes_for_1M_pairs": pairs_bytes(MILLION, d, d_c),
              "training": time_training(d, d_c, args.train_pairs, args.device)}
    write_json(args.out, result)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
