"""Caption pairs on the shapes world: a translator trained on CLIP text embeddings of captions of G(z)
(the paper's BLIP alternative, here with the world's own attribute captioner), without condition noise,
against the shipped translators trained on CLIP image embeddings (with condition noise 0.6, and without).

    OMP_NUM_THREADS=1 python benchmarks/caption_pairs.py --json benchmarks/caption-pairs-shapes.json
Steps: train the captioner (held-out attribute accuracy; agreement with the judge on G(z), z ~ p(z));
make caption pairs with the shipped G and CLIP, captions drawn by nucleus sampling (the reference's
top_p 0.9) and greedily; train a translator on each with the world's WORLD_TRAIN settings and
condition_noise = 0; judge accuracy of translator-only samples (T = 0) and of TR0N (T = 25) over the
world's prompts, with benchmarks/quality.py's accuracy(), torch backend. About 5 minutes on one thread.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from quality import accuracy  # benchmarks/quality.py: a script's folder is on sys.path
from tr0n_rt.export.captioners import NucleusConfig
from tr0n_rt.export.pairs import load_captions, load_pairs, make_pairs
from tr0n_rt.export.pipeline import TorchPipeline
from tr0n_rt.export.train_translator import TrainConfig, train_translator
from tr0n_rt.export.translator import TranslatorConfig
from tr0n_rt.export.worlds.build import WORLD_TRAIN
from tr0n_rt.export.worlds.shapes.captioner import (
    ShapesAttributeCaptioner,
    evaluate_captioner,
    save_captioner,
    train_shapes_captioner,
)
from tr0n_rt.export.worlds.shapes.judge import HEADS

from tr0n_rt.backends.torch import TorchBackend
from tr0n_rt.judge import open_judge
from tr0n_rt.paths import world_dir
from tr0n_rt.sampler import Sampler

ROOT = Path(__file__).resolve().parents[1]


@torch.no_grad()
def agreement_with_judge(captioner: ShapesAttributeCaptioner, judge, generator, n: int = 2000, seed: int = 11) -> dict:
    """On G(z), z ~ p(z): how often the captioner's most probable attribute is the judge's, per head."""
    images = generator(generator.sample_latent(n, generator=torch.Generator().manual_seed(seed)))
    logits = captioner.attribute_logits(images)
    seen = judge.predict(images)
    out = {}
    for head, names in HEADS.items():
        mine = [names[i] for i in logits[head].argmax(1).tolist()]
        out[head] = round(float(np.mean([a == b for a, b in zip(mine, seen[head][0])])), 4)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=20000, help="images captioned (one caption each by default)")
    ap.add_argument("--captioner-steps", type=int, default=1500)
    ap.add_argument("--captioner-seed", type=int, default=1)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--captions-per-image", type=int, default=1)
    ap.add_argument("--queries", type=int, default=150, help="first N prompts of the world's prompts.txt")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "caption-pairs-shapes")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    seconds, start = {}, time.perf_counter()

    folder = world_dir("shapes")
    pipe = TorchPipeline.load(folder)
    judge = open_judge(folder)
    g, f = pipe.generator, pipe.condition_model

    tick = time.perf_counter()
    net = train_shapes_captioner(steps=args.captioner_steps, seed=args.captioner_seed, progress=True)
    seconds["captioner"] = time.perf_counter() - tick
    save_captioner(net, args.work / "captioner.safetensors")
    captioner = ShapesAttributeCaptioner(weights=args.work / "captioner.safetensors", width=net.width)
    cap_acc = evaluate_captioner(net)
    agree = agreement_with_judge(captioner, judge, g)
    print(f"captioner: held-out accuracy {cap_acc}; agrees with the judge on G(z): {agree}", flush=True)

    variants = {  # label -> how captions are drawn
        f"nucleus top_p={args.top_p}": NucleusConfig(top_p=args.top_p, temperature=args.temperature,
                                                     captions_per_image=args.captions_per_image),
        "greedy": NucleusConfig(sample=False),
    }
    config = TranslatorConfig(**pipe.spec["translator"]["config"])
    train = TrainConfig(**{**WORLD_TRAIN.__dict__, "condition_noise": 0.0, "seed": 0})
    translators, pair_info = {}, {}
    for label, nucleus in variants.items():
        tag = "greedy" if not nucleus.sample else \
            f"p{nucleus.top_p}-t{nucleus.temperature}-k{nucleus.captions_per_image}"
        pairs_dir = args.work / f"pairs-{captioner.fingerprint}-{tag}-seed0"
        tick = time.perf_counter()
        make_pairs(g, f, args.pairs, pairs_dir, seed=0, captioner=captioner, nucleus=nucleus, tokenizer=pipe.tokenizer)
        pairs_seconds = time.perf_counter() - tick
        z, c, _ = load_pairs(pairs_dir)
        captions = load_captions(pairs_dir)
        tick = time.perf_counter()
        translators[f"caption pairs ({label} captions), no condition noise"], history = \
            train_translator(z, c, config, train)
        pair_info[label] = {
            "nucleus": nucleus.to_dict(), "images": args.pairs, "pairs": len(captions),
            "pairs_seconds": round(pairs_seconds, 1), "examples": captions[:6],
            "naming_background": round(float(np.mean([" background" in t for t in captions])), 4),
            "translator_seconds": round(time.perf_counter() - tick, 1),
            "translator_nll_first_last": [round(history[0], 2), round(history[-1], 2)]}

    translators["image pairs + condition noise 0.6 (shipped translator)"] = pipe.translator
    if pipe.image_translator is not None:
        translators["image pairs, no condition noise (shipped image_translator)"] = pipe.image_translator
    sampler = Sampler(TorchBackend(pipe))
    queries = [q for q in (folder / "prompts.txt").read_text().splitlines() if q.strip()][:args.queries]
    rows = []
    for name, translator in translators.items():
        pipe.translator = translator.eval().requires_grad_(False)  # the backend reads it at every run
        for steps in (0, args.steps):
            acc, sec = accuracy(sampler, judge, queries, args.samples, args.seed, args.batch,
                                sampler.config.with_overrides(steps=steps))
            rows.append({"translator": name, "steps": steps, "accuracy": round(acc, 4),
                         "seconds_per_sample": round(sec, 4)})
            print(f"{name:70s} T={steps:3d}  accuracy {acc:6.1%}  {sec * 1000:7.1f} ms/sample", flush=True)

    cap_config = captioner.config()
    if Path(cap_config["weights"]).is_relative_to(ROOT):
        cap_config["weights"] = str(Path(cap_config["weights"]).relative_to(ROOT))
    result = {
        "world": "shapes", "backend": "torch",
        "captioner": {"name": captioner.name, "config": cap_config, "steps": args.captioner_steps,
                      "seed": args.captioner_seed, "heldout_accuracy": cap_acc,
                      "agreement_with_judge_on_G": agree, "train_seconds": round(seconds["captioner"], 1)},
        "caption_pairs": pair_info,
        "translator_train": train.__dict__,
        "evaluation": {"queries": len(queries), "samples_per_query": args.samples, "seed": args.seed,
                       "settings": sampler.config.to_dict()},
        "rows": rows,
        "seconds_total": round(time.perf_counter() - start, 1),
        "machine": f"{platform.machine()} {platform.processor()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
