"""`tr0n-rt`: sample, eval and train from the command line. Every subcommand has --help."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .bench import add_parser as add_bench_parser
from .errors import Tr0nError

EPILOG = "Sample j of every prompt uses seed SEED + j, so a prompt's images do not depend on the others."


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


def load_judge(folder: Path):
    """The world's judge: the torch one when torch and pipeline.json are there, else the bundle's
    judge.onnx (tr0n_rt/judge.py, no torch); None when the folder has neither."""
    spec = None
    if (folder / "pipeline.json").is_file():
        spec = json.loads((folder / "pipeline.json").read_text()).get("judge")
    if spec:
        try:
            from .export.worlds import judge_from_spec

            return judge_from_spec(spec, folder)
        except ImportError:
            pass
    if (folder / "manifest.json").is_file():
        from .judge import RuntimeJudge

        return RuntimeJudge.from_bundle(folder)
    return None


def run_queries(sampler, queries: list[str], samples: int, seed: int, batch: int):
    """Samples every query `samples` times in batches; yields (rows, SampleBatch)."""
    conditions = sampler.conditions(queries) if queries else None
    yield from run_conditions(sampler, queries, conditions, samples, seed, batch)


def run_conditions(sampler, labels: list, conditions, samples: int, seed: int, batch: int,
                   translator: str = "translator"):
    """Samples every condition row `samples` times in batches (sample j with seed SEED + j); yields
    (rows, SampleBatch) with rows (label, j, seed, condition index)."""
    rows = [(label, j, seed + j, i) for i, label in enumerate(labels) for j in range(samples)]
    for start in range(0, len(rows), batch):
        part = rows[start:start + batch]
        yield part, sampler.sample(conditions[[i for *_, i in part]], [s for _, _, s, _ in part],
                                   translator=translator)


def judge_batch(judge, out, part, queries=None):
    """Every judge (torch or judge.onnx) takes numpy images; queries: what each row is judged against
    (default: its label; None skips that row)."""
    queries = [q for q, *_ in part] if queries is None else queries
    if judge is None or not any(q is not None for q in queries):
        return [None] * len(part)
    keep = [i for i, q in enumerate(queries) if q is not None]
    verdicts = judge.verdicts(out.images[keep], [queries[i] for i in keep])
    out_list = [None] * len(part)
    for i, v in zip(keep, verdicts):
        out_list[i] = v
    return out_list


def sample_inputs(args, sampler):
    """What `sample` conditions on: (labels, conditions, record key, translator graph, judged queries,
    interpolation t or None). Prompts/classes, or --image files; with --interpolate N, the N
    conditions between two endpoints (judged at the endpoints only)."""
    from .interpolate import interpolate

    if args.image and args.queries:
        raise Tr0nError("give prompts (or classes) or --image, not both")
    if not args.queries and not args.image:
        raise Tr0nError("give at least one prompt (or class for a class world), e.g. "
                        "tr0n-rt sample \"a red circle on a white background\", or --image PATH")
    if args.image:
        conditions, files = sampler.image_conditions(args.image)
        labels, key, translator, judged = [str(f) for f in files], "image", sampler.image_translator, None
    else:
        labels, conditions, translator = list(args.queries), sampler.conditions(args.queries), "translator"
        key = "class" if sampler.info.condition == "class" else "prompt"
        judged = list(labels)
    if args.interpolate is None:
        return labels, conditions, key, translator, judged, None
    if len(labels) != 2:
        raise Tr0nError(f"--interpolate takes exactly two endpoints (two prompts, classes or images), got {len(labels)}")
    n = args.interpolate
    kind = "image" if args.image else sampler.info.condition
    conditions = interpolate(conditions[0], conditions[1], n, kind)
    t = [i / (n - 1) for i in range(n)]
    ends = judged or [None, None]
    judged = [ends[0]] + [None] * (n - 2) + [ends[1]]
    return [f"{labels[0]} -> {labels[1]} @ {x:.2f}" for x in t], conditions, key, translator, judged, (labels, t)


def cmd_sample(args) -> int:
    from .images import clip_pixels, grid, png_bytes, to_pil

    check_outputs(args.out, args.json or args.out / "samples.json")  # before minutes of sampling, not after
    folder, sampler = open_sampler(args)
    labels, conditions, key, translator, judged, interp = sample_inputs(args, sampler)
    judge = load_judge(folder) if not args.no_judge else None
    records, images, captions = [], [], []
    for part, out in run_conditions(sampler, labels, conditions, args.samples, args.seed, args.batch, translator):
        verdicts = judge_batch(judge, out, part, [None if judged is None else judged[i] for *_, i in part])
        per_image = {k: round(v / len(part), 4) for k, v in out.seconds.items()}
        for r, (label, j, seed, i) in enumerate(part):
            rec = {key: label if interp is None else interp[0], "sample": j, "seed": seed,
                   "energy": float(out.energies[r]), "settings": out.config.to_dict(),
                   "seconds_per_image": per_image, "judge": verdicts[r]}
            if interp is not None:
                rec["t"] = interp[1][i]
            if out.aesthetic is not None:
                rec["aesthetic"] = float(out.aesthetic[r])
            records.append(rec)
            images.append(out.images[r])
            caption = label if interp is None else f"t={interp[1][i]:.2f}"
            captions.append(caption if verdicts[r] is None else f"{'ok' if verdicts[r]['correct'] else 'x'} {caption}")
    sheet_name, sheet = "grid.png", None
    if interp is not None:  # one strip per sample j: [source image,] t = 0 ... t = 1 [, source image]
        n = len(interp[1])
        order = sorted(range(len(records)), key=lambda r: (records[r]["sample"], records[r]["t"]))
        cells, caps = [], []
        src = [clip_pixels(f, sampler.info.image_size) * 2 - 1 for f in interp[0]] if args.image else None
        for j in range(args.samples):
            row = [r for r in order if records[r]["sample"] == j]
            if args.image:
                cells += [src[0]] + [images[r] for r in row] + [src[1]]
                caps += ["source"] + [captions[r] for r in row] + ["source"]
            else:
                cells += [images[r] for r in row]
                caps += [captions[r] for r in row]
        columns = n + (2 if args.image else 0)
        sheet_name, sheet = "strip.png", grid(np.stack(cells), caps, columns=columns)
    else:
        sheet = grid(np.stack(images), captions, columns=min(len(images), 8))
    out_dir, json_path = args.out, args.json or args.out / "samples.json"
    for n, rec in enumerate(records):
        rec["file"] = str(out_dir / f"{n:03d}.png")
    summary = {"pipeline": str(folder), "backend": sampler.backend.name, "precision": args.precision,
               "fp16_fallback_steps": sampler.backend.fp16_fallbacks,
               "conditioning": key, "translator": translator, sheet_name.removesuffix(".png"): str(out_dir / sheet_name),
               "images": records}
    if interp is not None:
        summary["interpolation"] = {"endpoints": interp[0], "t": interp[1],
                                    "method": "linear" if key == "class" else "slerp"}
    write_results(out_dir, json_path, {Path(rec["file"]).name: png_bytes(to_pil(img)) for rec, img in
                                       zip(records, images)} | {sheet_name: png_bytes(sheet)}, summary)
    for rec in records:
        verdict = rec["judge"]
        note = "" if verdict is None else f"  judge: {'correct' if verdict['correct'] else 'wrong'}"
        where = f" t={rec['t']:.2f}" if "t" in rec else ""
        print(f"{rec['file']}  E={rec['energy']:.4f}  {rec[key]!r}{where}{note}")
    print(f"{sheet_name.removesuffix('.png')}: {out_dir / sheet_name}  json: {json_path}")
    return 0


def check_outputs(out_dir: Path, json_path: Path | None = None) -> None:
    """Tr0nError unless out_dir is a folder or can be created as one, and json_path is not a folder.
    Creates nothing: a run refused later leaves no empty folder behind."""
    if out_dir.exists() and not out_dir.is_dir():
        raise Tr0nError(f"--out {out_dir} is a file: give a folder (it is created if missing)")
    if json_path is not None and json_path.is_dir():
        raise Tr0nError(f"--json {json_path} is a folder: give a file name")
    for path in (out_dir, json_path.parent if json_path is not None else out_dir):
        existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise Tr0nError(f"cannot write into {path}: {existing} is not a writable folder; choose another "
                            "--out / --json")


def write_results(out_dir: Path, json_path: Path, files: dict[str, bytes], summary: dict) -> None:
    """Writes `files` (name -> bytes) into out_dir, then the summary JSON. Everything is written first
    (the JSON beside json_path under a temporary name, the files into a staging folder in out_dir);
    only then are the files renamed into place and the JSON last, so a failed write (a full disk)
    leaves the previous run's files as they were. The summary records out_dir as an absolute path
    ("out"); numbered PNGs that the previous JSON at json_path recorded for this same folder, and this
    run did not write, are then removed, so no image is left that no JSON describes."""
    from .atomic import atomic_path, json_bytes

    summary = {**summary, "out": str(out_dir.resolve())}
    previous = listed_images(json_path, out_dir)
    text = json_bytes(summary)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(json_path) as staged_json:  # renamed onto json_path when the block succeeds
            staged_json.write_bytes(text)
            with tempfile.TemporaryDirectory(prefix=".tr0n-rt-sample.", dir=out_dir) as stage:
                for name, data in files.items():
                    (Path(stage) / name).write_bytes(data)
                for name in files:
                    os.replace(Path(stage) / name, out_dir / name)
    except OSError as e:
        raise Tr0nError(f"cannot write the results ({e.strerror}: {e.filename}): free space or choose "
                        "another --out / --json") from None
    for stale in previous - set(files):
        (out_dir / stale).unlink(missing_ok=True)


def listed_images(json_path: Path, out_dir: Path) -> set[str]:
    """Names of the numbered PNGs (000.png, ...) that an earlier samples JSON at json_path lists for
    this very folder: it must record out_dir (absolute) as its "out". A JSON of another folder, of
    an older version (no "out"), or unreadable lists nothing, so nothing is removed."""
    try:
        previous = json.loads(json_path.read_text())
        if previous.get("out") != str(out_dir.resolve()):
            return set()
        names = {Path(r["file"]).name for r in previous["images"] if isinstance(r.get("file"), str)}
    except Exception:  # noqa: BLE001 - any damage to an old JSON only means: remove nothing
        return set()
    return {n for n in names if re.fullmatch(r"\d{3,}\.png", n)}


def cmd_eval(args) -> int:
    from .atomic import write_json

    folder, sampler = open_sampler(args)
    judge = load_judge(folder)
    if judge is None:
        raise Tr0nError(f"{folder} has no judge: eval needs a world's pipeline or a bundle exported with its judge")
    prompts_file = args.prompts or folder / "prompts.txt"
    if not Path(prompts_file).is_file():
        raise Tr0nError(f"prompt file {prompts_file} does not exist: give --prompts FILE, one prompt per line")
    queries = [line.strip() for line in Path(prompts_file).read_text().splitlines() if line.strip()]
    if args.limit:
        queries = queries[:args.limit]
    tick = time.perf_counter()
    results = []
    for part, out in run_queries(sampler, queries, args.samples, args.seed, args.batch):
        for (q, j, seed, _), v in zip(part, judge_batch(judge, out, part)):
            results.append({"query": q, "sample": j, "seed": seed, "correct": bool(v["correct"]), "judge": v})
    seconds = time.perf_counter() - tick
    accuracy = float(np.mean([r["correct"] for r in results])) if results else float("nan")
    summary = {"pipeline": str(folder), "prompts_file": str(prompts_file), "queries": len(queries),
               "samples_per_query": args.samples, "images": len(results), "accuracy": accuracy,
               "seconds_per_image": seconds / max(len(results), 1), "settings": sampler.config.to_dict(),
               "results": results}
    if args.json:
        write_json(args.json, summary)
    print(f"judge accuracy {accuracy:.3f} over {len(results)} images ({len(queries)} queries x {args.samples}); "
          f"{summary['seconds_per_image']:.3f} s/image")
    return 0


def build_time(module: str, what: str):
    """Imports a tr0n_rt.export module, or says which extra to install."""
    import importlib

    try:
        return importlib.import_module(f"tr0n_rt.export.{module}")
    except ImportError as e:
        raise Tr0nError(f"{what} needs the export extra ({e}): pip install 'tr0n-rt[export]'") from None


def cmd_train(args) -> int:
    from .paths import engines_dir

    build_world = build_time("worlds.build", "training").build_world
    out = args.out or engines_dir() / args.world
    tick = time.perf_counter()
    times = build_world(args.world, out, seed=args.seed, work_dir=args.work, threads=args.threads)
    print(f"world {args.world} built into {out} in {time.perf_counter() - tick:.0f} s "
          f"({', '.join(f'{k} {v:.0f} s' for k, v in times.items())})")
    return 0


def cmd_export(args) -> int:
    from .paths import DEFAULT_WORLD, world_dir

    export_bundle = build_time("bundle_export", "export").export_bundle
    source = args.pipeline if args.pipeline is not None else world_dir(args.world or DEFAULT_WORLD)
    tick = time.perf_counter()
    out = export_bundle(source, args.out, fp16=not args.no_fp16, validate=not args.no_validate, progress=True,
                        graphs=args.graphs, fp16_strict=not args.fp16_lenient)
    print(f"bundle written to {out} in {time.perf_counter() - tick:.0f} s")
    return 0


def cmd_build(args) -> int:
    from .paths import DEFAULT_WORLD, world_dir

    build_engines = build_time("engines", "building engines").build_engines
    bundle = args.bundle or world_dir(args.world or DEFAULT_WORLD)
    out = build_engines(bundle, batch_sizes=tuple(args.batch), copies=args.copies, components=args.components,
                        precision=args.precision, opt_level=args.opt_level, workspace_mib=args.workspace_mib,
                        timing_cache=args.timing_cache, hardware_compatible=args.hardware_compatible,
                        version_compatible=args.version_compatible, graphs=args.graphs, keep_going=args.keep_going,
                        progress=True)
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
    p.add_argument("--interpolate", type=whole_number(2), default=None, metavar="N",
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
    p.add_argument("--batch", type=whole_number(1), nargs="+", default=[1, 8, 32], help="batch sizes, one profile each")
    p.add_argument("--copies", type=whole_number(0), nargs="+", default=None, help="augmented copies A (default: the bundle's)")
    p.add_argument("--components", type=whole_number(1), nargs="+", default=None, help="mixture sizes K (default: 1 and K)")
    p.add_argument("--precision", choices=["fp16", "fp32"], default="fp16", help="which graphs (default: fp16)")
    p.add_argument("--opt-level", type=whole_number(0), default=3, help="TensorRT builder optimisation level 0-5 (default: 3)")
    p.add_argument("--workspace-mib", type=whole_number(1), default=None, help="builder workspace limit (Jetson: keep it small)")
    p.add_argument("--timing-cache", type=Path, default=None, help="timing cache file, read and updated")
    p.add_argument("--hardware-compatible", action="store_true", help="engines that run on any Ampere+ GPU")
    p.add_argument("--version-compatible", action="store_true", help="engines that run on newer TensorRT 10.x")
    p.add_argument("--graphs", nargs="+", default=None, help="build only these graphs")
    p.add_argument("--keep-going", action="store_true", help="record a failed graph and build the others")
    p.set_defaults(func=cmd_build)

    add_bench_parser(sub)

    p = sub.add_parser("train", help="rebuild an embedded world from scratch",
                       description="Data -> models -> synthetic pairs -> translator, with fixed seeds.")
    p.add_argument("--world", required=True, choices=["shapes", "digits"], help="world to build")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: engines/WORLD)")
    p.add_argument("--work", type=Path, default=None, help="folder for synthetic pairs (default: engines/.cache)")
    p.add_argument("--seed", type=whole_number(0), default=0, help="seed of every stage (default: 0)")
    p.add_argument("--threads", type=whole_number(1), default=None, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Tr0nError as e:
        print(f"tr0n-rt: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
