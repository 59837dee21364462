"""A pipeline of real architecture sizes with random weights (speed does not depend on weight values):
open_clip text/image encoders + a generator family, written as a pipeline folder for export and timing.

    python benchmarks/random_pipeline.py --out /tmp/sg2-b32 --clip ViT-B-32 --generator stylegan2 --resolution 256
    python benchmarks/random_pipeline.py --out /tmp/bgd512-b32 --generator biggan_deep --resolution 512
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from tr0n_rt.export.augment import AugmentConfig
from tr0n_rt.export.checkpoints import save_state
from tr0n_rt.export.models.registry import build_condition_model, build_generator
from tr0n_rt.export.pipeline import write_pipeline
from tr0n_rt.export.translator import TranslatorConfig, TranslatorGMM
from tr0n_rt.settings import PRESETS
from tr0n_rt.tokenizer import CLIPTokenizer

GENERATORS = {
    "stylegan2": lambda res: {"resolution": res},
    "dcgan": lambda res: {"latent_dim": 128, "image_size": res, "channels": 3, "width": 64},
    "biggan": lambda res: {"resolution": res},  # TF Hub BigGAN widths (ch 96)
    "biggan_deep": lambda res: {"resolution": res},  # TF Hub BigGAN-deep widths (ch 128)
}


def build_random_pipeline(out: Path, clip: str = "ViT-B-32", generator: str = "stylegan2", resolution: int = 256,
                          seed: int = 0, sampling=None) -> Path:
    """Writes the pipeline folder; returns it."""
    torch.manual_seed(seed)
    gen_cfg = GENERATORS[generator](resolution)
    g = build_generator(generator, gen_cfg)
    if generator == "dcgan":  # vivid images, not DCGAN's near-blank N(0, 0.02) start
        for m in g.modules():
            if isinstance(m, torch.nn.ConvTranspose2d):
                torch.nn.init.normal_(m.weight, 0.0, 1.0 / (m.weight.shape[0] * 4) ** 0.5)
    f = build_condition_model("open_clip", {"model_name": clip})
    out.mkdir(parents=True, exist_ok=True)
    save_state(g.state_dict(), out / "generator.safetensors")
    save_state(f.state_dict(), out / "clip.safetensors")
    # BigGAN's latent [z | class embedding] is bounded: means = 2 tanh(.), as the reference's translator
    translator = TranslatorGMM(TranslatorConfig(cond_dim=f.cond_dim, latent_dim=g.latent.dim,
                                                mean_bound=g.latent.bounds))
    parts = {"name": f"{clip}+{generator}{resolution}-random", "condition": "text", "classes": None,
             "tokenizer": CLIPTokenizer(context_length=f.context_length).to_dict(),
             "generator": {"family": generator, "config": gen_cfg, "weights": "generator.safetensors"},
             "condition_model": {"family": "open_clip", "config": {"model_name": clip}, "weights": "clip.safetensors"}}
    write_pipeline(out, parts, translator, AugmentConfig(), sampling or PRESETS["paper"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--clip", default="ViT-B-32")
    ap.add_argument("--generator", choices=sorted(GENERATORS), default="stylegan2")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    build_random_pipeline(args.out, args.clip, args.generator, args.resolution, args.seed)
    print(f"random pipeline written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
