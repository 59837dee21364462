"""`tr0n-rt`: sample, eval and train from the command line. Every subcommand has --help."""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bench import add_parser as add_bench_parser
from .cli_args import (
    MAX_BATCH,
    MAX_COMPONENTS,
    MAX_COPIES,
    MAX_EPOCHS,
    MAX_INTERPOLATE,
    MAX_OPT_LEVEL,
    MAX_SEED,
    MAX_THREADS,
    MAX_WORKSPACE_MIB,
    add_pipeline_args,
    add_sampling_args,
    check_seed_range,
    memory_size,
    open_sampler,
    pipeline_folder,
    whole_number,
)
from .cli_pipeline import add_parsers as add_pipeline_parsers
from .cli_pipeline import check_train_args, cmd_train_pipeline
from .errors import PromptError, Tr0nError
from .extras import build_time
from .interpolate import Interpolation, interpolation, strip_cells
from .judge import judge_images, open_judge
from .output_checks import check_output_files, check_outputs
from .outputs import Interrupted, write_results
from .sampler import sample_queries, sample_rows
from .serve.cli import add_parser as add_serve_parser

EPILOG = ("Sample j of every prompt uses seed SEED + j, so a prompt's noise does not depend on the others; the same "
          "--batch gives the same images bit for bit (README, \"Batch invariance\").")


@dataclass
class Conditioning:
    """What `sample` conditions on: one label and condition row per point, the record key, the translator
    graph, what each point is judged against (None: not judged), and the interpolation, if any."""

    labels: list
    conditions: np.ndarray  # [N, d_c]
    key: str  # "prompt" | "class" | "image"
    translator: str
    judged: list | None
    interpolation: Interpolation | None = None


def conditioning(args, sampler) -> Conditioning:
    """Prompts/classes, or --image files; with --interpolate N, the N conditions between two endpoints
    (judged at the endpoints only)."""
    if args.image and args.queries:
        raise Tr0nError("give prompts (or classes) or --image, not both")
    if not args.queries and not args.image:
        raise Tr0nError("give at least one prompt (or class for a class world), e.g. "
                        "tr0n-rt sample \"a red circle on a white background\", or --image PATH")
    if args.image:
        conditions, files = sampler.image_conditions(args.image)
        c = Conditioning([str(f) for f in files], conditions, "image", sampler.image_translator, None)
    else:
        c = Conditioning(list(args.queries), sampler.conditions(args.queries),
                         "class" if sampler.info.condition == "class" else "prompt", "translator", list(args.queries))
    if args.interpolate is None:
        return c
    kind = "image" if args.image else sampler.info.condition
    inter = interpolation(c.labels, c.conditions, c.judged, args.interpolate, kind)
    return Conditioning(inter.labels, inter.conditions, c.key, c.translator, inter.judged, inter)


def cmd_sample(args) -> int:
    from .images import clip_pixels, grid, png_bytes, to_pil

    out_dir, json_path = args.out, args.json or args.out / "samples.json"
    check_seed_range(args)
    folder = pipeline_folder(args)
    check_outputs(out_dir, json_path, pipeline=folder, images=args.image or ())  # before loading and sampling
    folder, sampler = open_sampler(args, folder)
    cond = conditioning(args, sampler)
    inter = cond.interpolation
    judge = open_judge(folder) if not args.no_judge else None
    records, images, captions, plans = [], [], [], []
    for part, out in sample_rows(sampler, cond.labels, cond.conditions, args.samples, args.seed, args.batch,
                                 cond.translator):
        verdicts = judge_images(judge, out.images, [None if cond.judged is None else cond.judged[i] for *_, i in part])
        per_image = {k: round(v / len(part), 4) for k, v in out.seconds.items()}
        plans.append(out.plan)
        for r, (label, j, seed, i) in enumerate(part):
            rec = {cond.key: label if inter is None else inter.endpoints, "sample": j, "seed": seed,
                   "energy": float(out.energies[r]), "settings": out.config.to_dict(),
                   "seconds_per_image": per_image, "judge": verdicts[r]}
            if inter is not None:
                rec["t"] = inter.t[i]
            if out.aesthetic is not None:
                rec["aesthetic"] = float(out.aesthetic[r])
            records.append(rec)
            images.append(out.images[r])
            caption = label if inter is None else f"t={inter.t[i]:.2f}"
            captions.append(caption if verdicts[r] is None else f"{'ok' if verdicts[r]['correct'] else 'x'} {caption}")
    if inter is not None:
        sources = [clip_pixels(f, sampler.info.image_size) * 2 - 1 for f in inter.endpoints] if args.image else None
        cells, caps, columns = strip_cells([(r["sample"], r["t"]) for r in records], images, captions, args.samples,
                                           sources)
        sheet_name, sheet = "strip.png", grid(np.stack(cells), caps, columns=columns)
    else:
        sheet_name, sheet = "grid.png", grid(np.stack(images), captions, columns=min(len(images), 8))
    for n, rec in enumerate(records):
        rec["file"] = str(out_dir / f"{n:03d}.png")
    summary = {"pipeline": str(folder), "backend": sampler.backend.name, "precision": args.precision,
               "fp16_fallback_steps": sampler.backend.fp16_fallbacks, "conditioning": cond.key,
               "translator": cond.translator, "memory_plan": plans[0] if plans else None,
               sheet_name.removesuffix(".png"): str(out_dir / sheet_name),
               "images": records}
    if inter is not None:
        summary["interpolation"] = {"endpoints": inter.endpoints, "t": inter.t,
                                    "method": "linear" if cond.key == "class" else "slerp"}
    write_results(out_dir, json_path, {Path(rec["file"]).name: png_bytes(to_pil(img)) for rec, img in
                                       zip(records, images)} | {sheet_name: png_bytes(sheet)}, summary)
    for rec in records:
        verdict = rec["judge"]
        note = "" if verdict is None else f"  judge: {'correct' if verdict['correct'] else 'wrong'}"
        where = f" t={rec['t']:.2f}" if "t" in rec else ""
        print(f"{rec['file']}  E={rec['energy']:.4f}  {rec[cond.key]!r}{where}{note}")
    print(f"{sheet_name.removesuffix('.png')}: {out_dir / sheet_name}  json: {json_path}")
    return 0


def cmd_eval(args) -> int:
    from .atomic import write_json
    from .diversity import PromptImages

    check_seed_range(args)
    folder = pipeline_folder(args)
    prompts_file = args.prompts or folder / "prompts.txt"
    check_output_files({"--json": args.json}, pipeline=folder, inputs={f"the prompts file {prompts_file}": prompts_file})
    queries = read_prompts(prompts_file, args.limit)  # before loading anything
    folder, sampler = open_sampler(args, folder)
    judge = open_judge(folder)
    if judge is None:
        raise Tr0nError(f"{folder} has no judge: eval needs a world's pipeline or a bundle exported with its judge")
    tick = time.perf_counter()
    results, gathered = [], PromptImages(args.samples)  # gathered: each prompt's image features, not its images
    for part, out in sample_queries(sampler, queries, args.samples, args.seed, args.batch):
        verdicts = judge_images(judge, out.images, [q for q, *_ in part])
        gathered.add([i for *_, i in part], out.images, verdicts)
        for (q, j, seed, _), v in zip(part, verdicts):
            results.append({"query": q, "sample": j, "seed": seed, "correct": bool(v["correct"]), "judge": v})
    seconds = time.perf_counter() - tick
    accuracy = float(np.mean([r["correct"] for r in results])) if results else float("nan")
    summary = {"pipeline": str(folder), "prompts_file": str(prompts_file), "queries": len(queries),
               "samples_per_query": args.samples, "images": len(results), "accuracy": accuracy,
               "seconds_per_image": seconds / max(len(results), 1), "settings": sampler.config.to_dict(),
               "diversity": diversity(sampler, judge, results, gathered.groups()), "results": results}
    if args.json:
        write_json(args.json, summary)
    print(f"judge accuracy {accuracy:.3f} over {len(results)} images ({len(queries)} queries x {args.samples}); "
          f"{summary['seconds_per_image']:.3f} s/image")
    print_diversity(summary["diversity"])
    return 0


def diversity(sampler, judge, results: list[dict], groups: list) -> dict:
    """eval's diversity report (tr0n_rt/diversity.py; 1.0: as diverse as the generator's own samples):

        open_attributes   judges with the "words" rule: entropy of what the prompts leave open
        within_class      judges with the "class" rule: pooled-pixel distance within the prompt's class
        distinct_images   any judge: distinct images per prompt
        position_size     any judge: spread of the foreground's centroid and size
        headline          which of the first two `defined`, `mean` and `per_head` repeat (per_head: the open
                          attributes' heads; {} for within_class), kept at the top level for older readers

    groups: per prompt (ImageFeatures, verdicts), from diversity.PromptImages."""
    from .diversity import (
        distinct_images,
        open_attribute_diversity,
        position_size,
        prior_samples,
        within_class,
    )

    spec = judge.entry if hasattr(judge, "entry") else judge.runtime_spec()  # judge.onnx's, or a torch judge's
    heads, kind = spec["heads"], spec["rule"]["kind"]
    prior = prior_samples(sampler.backend, judge, heads)
    features = [f for f, _ in groups]
    if kind == "words":
        head, report = "open_attributes", {
            "open_attributes": open_attribute_diversity([r["query"] for r in results], [r["judge"] for r in results],
                                                        prior.labels, list(heads)),
            "within_class": {"defined": False, "why": "the judge has no class rule: see open_attributes"}}
    else:
        head, report = "within_class", {
            "open_attributes": {"defined": False, "why": "every query names the judge's only head (a class): "
                                                         "nothing is left open; see within_class"},
            "within_class": within_class(groups, prior, next(iter(heads)))}
    report["distinct_images"] = distinct_images(features, prior.features)
    report["position_size"] = position_size(features, prior.features)
    top = report[head]
    return {"defined": top["defined"], "mean": top["mean"], "per_head": top.get("per_head", {}), "headline": head,
            **report}


def print_diversity(div: dict) -> None:
    """One line per defined diversity measure of eval."""
    opened, within = div["open_attributes"], div["within_class"]
    distinct, spread = div["distinct_images"], div["position_size"]
    if opened["defined"]:
        print(f"open-attribute diversity {opened['mean']:.3f} (1.0: as diverse as the generator) over "
              f"{opened['open_pairs']} (prompt, open attribute) pairs: "
              + ", ".join(f"{h} {v:.3f}" for h, v in opened["per_head"].items()))
    if within["defined"]:
        print(f"within-class diversity {within['mean']:.3f} (1.0: as diverse as the generator's samples of the "
              f"class) over {within['prompts']} prompts: "
              + ", ".join(f"{k} {v:.3f}" for k, v in within["per_class"].items()))
    if distinct["defined"]:
        print(f"distinct images {distinct['mean']:.3f} (1.0: as many as the generator's): {distinct['fraction']:.3f} "
              f"of a prompt's samples are distinct (mean |difference| >= {distinct['threshold']})")
    if spread["defined"]:
        print(f"position/size spread {spread['position']:.3f} / {spread['size']:.3f} (1.0: as spread as the "
              f"generator) over {spread['prompts']} prompts; {spread['empty_masks']} images without foreground")


def read_prompts(path: Path, limit: int = 0) -> list[str]:
    """The non-blank lines of a UTF-8 prompts file (the first `limit`; 0: all); PromptError for a file that
    is missing, unreadable, not UTF-8 or without a prompt."""
    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise PromptError(f"prompt file {path} {what}: give --prompts FILE, one prompt per line")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise PromptError(f"cannot read prompt file {path} ({e.strerror}): check its permissions") from None
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise PromptError(f"prompt file {path} is not UTF-8 text (byte {e.start}, line {line}): save it as "
                          "UTF-8, one prompt per line") from None
    queries = [line.strip() for line in text.splitlines() if line.strip()]
    if not queries:
        raise PromptError(f"prompt file {path} holds no prompts (only blank lines): write one prompt or class "
                          "per line")
    return queries[:limit] if limit else queries


def refuse_installed(folder: Path, instead: str) -> None:
    """Tools never write into an installed tr0n-rt (a wheel's shipped worlds)."""
    from .paths import inside_installed_package

    if inside_installed_package(folder):
        raise Tr0nError(f"{folder} is inside the installed tr0n-rt package, which tools never write into: give {instead}")


def cmd_train(args) -> int:
    from .paths import engines_dir

    check_train_args(args)
    if args.pipeline is not None:
        return cmd_train_pipeline(args)
    build_world = build_time("worlds.build", "training").build_world
    out = args.out or engines_dir() / args.world
    refuse_installed(out, "--out DIR")
    tick = time.perf_counter()
    times = build_world(args.world, out, seed=args.seed or 0, work_dir=args.work, threads=args.threads)
    print(f"world {args.world} built into {out} in {time.perf_counter() - tick:.0f} s "
          f"({', '.join(f'{k} {v:.0f} s' for k, v in times.items())})")
    return 0


def cmd_export(args) -> int:
    from .paths import DEFAULT_WORLD, world_dir

    export_bundle = build_time("bundle_export", "export").export_bundle
    source = args.pipeline if args.pipeline is not None else world_dir(args.world or DEFAULT_WORLD)
    refuse_installed(args.out or source, "--out DIR")
    tick = time.perf_counter()
    out = export_bundle(source, args.out, fp16=not args.no_fp16, validate=not args.no_validate, progress=True,
                        graphs=args.graphs, fp16_strict=not args.fp16_lenient)
    print(f"bundle written to {out} in {time.perf_counter() - tick:.0f} s")
    return 0


def cmd_build(args) -> int:
    from .paths import DEFAULT_WORLD, world_dir

    build_engines = build_time("engines", "building engines").build_engines
    bundle = args.bundle or world_dir(args.world or DEFAULT_WORLD)
    refuse_installed(bundle, "a copy of the bundle (cp -r BUNDLE COPY; tr0n-rt build COPY)")
    out = build_engines(bundle, batch_sizes=tuple(args.batch), copies=args.copies, components=args.components,
                        precision=args.precision, opt_level=args.opt_level, workspace_mib=args.workspace_mib,
                        timing_cache=args.timing_cache, hardware_compatible=args.hardware_compatible,
                        version_compatible=args.version_compatible, graphs=args.graphs, keep_going=args.keep_going,
                        progress=True, memory_budget=args.memory_budget)
    for graph, message in out.get("failed", {}).items():
        print(f"{graph}: not built: {message}", file=sys.stderr)
    print(f"engines for {bundle}: {', '.join(out.get('engines', {})) or 'none'} ({out.get('seconds', 0):.0f} s)")
    return 1 if out.get("failed") and not args.keep_going else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tr0n-rt", description="TR0N sampling: translator + Langevin, on any engine.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="generate images for prompts or classes", epilog=EPILOG,
                       description="Generate images with TR0N: translator, then Langevin on the energy.")
    p.add_argument("queries", nargs="*", help="prompts (text worlds) or class names (class worlds)")
    p.add_argument("--image", type=Path, nargs="+", default=None, metavar="PATH",
                   help="condition on images instead (files or folders; CLIP pipelines): c = the CLIP image "
                        "embedding, mapped by the pipeline's image translator when it has one")
    p.add_argument("--interpolate", type=whole_number(2, MAX_INTERPOLATE), default=None, metavar="N",
                   help="N conditions from the first to the second prompt/class/image (slerp on the CLIP "
                        "sphere; classes linearly), each sampled with TR0N; writes OUT/strip.png")
    add_pipeline_args(p)
    add_sampling_args(p)
    p.add_argument("--out", type=Path, default=Path("out"), help="folder for PNGs and JSON (default: out)")
    p.add_argument("--json", type=Path, default=None, help="JSON file of records (default: OUT/samples.json)")
    p.add_argument("--no-judge", action="store_true", help="skip the world judge's verdicts")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval", help="judge accuracy over a prompt file", epilog=EPILOG,
                       description="Sample every prompt of a file and report the world judge's accuracy.")
    add_pipeline_args(p)
    add_sampling_args(p)
    p.add_argument("--prompts", type=Path, default=None, help="one prompt or class per line (default: the world's)")
    p.add_argument("--limit", type=whole_number(0), default=0, help="use only the first N prompts (0 = all)")
    p.add_argument("--json", type=Path, default=None, help="write the accuracy and every verdict here")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="export a pipeline's graphs to a validated ONNX bundle",
                       description="Trace every graph (the Langevin step with its gradient included), export "
                                   "it to ONNX with a dynamic batch, validate it against torch at two inputs, "
                                   "and write FP16 variants and manifest.json.")
    p.add_argument("--world", default=None, help="embedded world to export (default: shapes)")
    p.add_argument("--pipeline", type=Path, default=None, help="pipeline folder (with pipeline.json)")
    p.add_argument("--out", type=Path, default=None, help="bundle folder (default: the pipeline folder)")
    p.add_argument("--graphs", nargs="+", default=None,
                   help="export only these graphs (text_encoder, translator, generator, energy, step)")
    p.add_argument("--no-fp16", action="store_true", help="skip the FP16 variants")
    p.add_argument("--no-validate", action="store_true", help="skip the comparison with torch (not recommended)")
    p.add_argument("--fp16-lenient", action="store_true",
                   help="record FP16 results outside tolerance in the manifest instead of failing "
                        "(for random-weight models, whose FP16 error says little about trained ones)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("build", help="build TensorRT engines for a bundle (needs an NVIDIA GPU)",
                       description="Build one TensorRT engine per graph from the bundle's FP16 (or fp32) ONNX "
                                   "graphs through polygraphy, as strongly typed networks with static-batch "
                                   "profiles (for CUDA-graph replay), and stamp them into manifest.json.")
    p.add_argument("bundle", nargs="?", type=Path, default=None, help="bundle folder (default: the --world's)")
    p.add_argument("--world", default=None, help="embedded world whose bundle to build (default: shapes)")
    p.add_argument("--batch", type=whole_number(1, MAX_BATCH), nargs="+", default=[1, 8, 32],
                   help=f"batch sizes, one profile each, 1 to {MAX_BATCH}")
    p.add_argument("--copies", type=whole_number(0, MAX_COPIES), nargs="+", default=None,
                   help="augmented copies A (default: the bundle's)")
    p.add_argument("--components", type=whole_number(1, MAX_COMPONENTS), nargs="+", default=None,
                   help="mixture sizes K (default: 1 and K)")
    p.add_argument("--precision", choices=["fp16", "fp32"], default="fp16", help="which graphs (default: fp16)")
    p.add_argument("--opt-level", type=whole_number(0, MAX_OPT_LEVEL), default=3, help="TensorRT builder optimisation level 0-5 (default: 3)")
    p.add_argument("--workspace-mib", type=whole_number(1, MAX_WORKSPACE_MIB), default=None, help="builder workspace limit (Jetson: keep it small)")
    p.add_argument("--timing-cache", type=Path, default=None, help="timing cache file, read and updated")
    p.add_argument("--hardware-compatible", action="store_true", help="engines that run on any Ampere+ GPU")
    p.add_argument("--version-compatible", action="store_true", help="engines that run on newer TensorRT 10.x")
    p.add_argument("--graphs", nargs="+", default=None, help="build only these graphs")
    p.add_argument("--keep-going", action="store_true", help="record a failed graph and build the others")
    p.add_argument("--memory-budget", type=memory_size, default=None, metavar="SIZE",
                   help="device memory for sampling, e.g. 8G: engines for the memory plan of each --batch "
                        "(sub-batches, chunks of copies; tr0n_rt/memory.py) instead of the batch sizes as given")
    p.set_defaults(func=cmd_build)

    add_bench_parser(sub)
    add_pipeline_parsers(sub)
    add_serve_parser(sub)

    p = sub.add_parser("train", help="train a pipeline's translator, or rebuild an embedded world",
                       description="--pipeline DIR: train (or resume training) the translator of a pipeline made "
                                   "by `tr0n-rt create` on its pairs (`tr0n-rt pairs`), keeping the best epoch by "
                                   "validation NLL. --world NAME: rebuild an embedded world from scratch (data -> "
                                   "models -> synthetic pairs -> translator, with fixed seeds).")
    p.add_argument("--pipeline", type=Path, default=None, help="pipeline folder whose translator to train")
    p.add_argument("--image", action="store_true", help="--pipeline: train the image translator (no condition noise)")
    p.add_argument("--device", default="cpu", help="--pipeline: cpu or cuda (default: cpu)")
    p.add_argument("--epochs", type=whole_number(1, MAX_EPOCHS), default=None, help="--pipeline: epochs (default: the recipe's)")
    p.add_argument("--world", default=None, choices=["shapes", "digits"], help="world to rebuild")
    p.add_argument("--out", type=Path, default=None, help="--world: output folder (default: engines/WORLD)")
    p.add_argument("--work", type=Path, default=None,
                   help="--world: folder for synthetic pairs (default: OUT/../.cache/WORLD-pairs-seedSEED)")
    p.add_argument("--seed", type=whole_number(0, MAX_SEED), default=None, help="--world: seed of every stage (default: 0)")
    p.add_argument("--threads", type=whole_number(1, MAX_THREADS), default=None, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=cmd_train)
    return parser


# What Ctrl-C leaves, per command, when the command did not say more (an outputs.Interrupted says what
# was kept). sample, eval and bench write only at the end, each file whole or not at all.
NOTHING_WRITTEN = "nothing was written"
INTERRUPTED = {"sample": NOTHING_WRITTEN, "eval": NOTHING_WRITTEN, "bench": NOTHING_WRITTEN}
UNFINISHED = "the command did not finish; files it had completed are kept: rerun it to finish"


def main(argv: list[str] | None = None) -> int:
    command = None
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        return args.func(args)
    except Tr0nError as e:
        print(f"tr0n-rt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        note = str(e) if isinstance(e, Interrupted) and str(e) else INTERRUPTED.get(command, UNFINISHED)
        print(f"tr0n-rt: interrupted; {note}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
