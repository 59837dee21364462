"""`tr0n-rt export`: a torch pipeline folder -> a validated bundle (manifest.json + ONNX graphs).

Each graph is traced (gradient included), exported with a dynamic batch, fixed (onnx_fixes), checked
for ops TensorRT cannot take, validated against torch, converted to FP16 and validated again. Every file
is first written to a staging folder inside the bundle; only when all graphs have passed are they moved
into place (same file system: renames) and the manifest written last. A failed export leaves the bundle
as it was: the previous graphs and manifest, still loadable.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import onnx

from tr0n_rt.atomic import atomic_path, write_bytes
from tr0n_rt import noise
from tr0n_rt.backends.onnxruntime import SESSION_SETTINGS
from tr0n_rt.bundle import FORMAT, SCHEMA_VERSION, SPEC_FILE, file_entry, read_manifest, sha256_file
from tr0n_rt.errors import ConfigError
from tr0n_rt.graphs import GraphSpec, graph_parts

from . import fp16 as fp16_mod
from .clean import strip_build_metadata
from .graphs import export_graph, graph_specs
from .memory_count import activation_rows
from .onnx_fixes import (conv_grads_as_conv, decompose_layer_norms, expanded_weight_reads, fold_expanded_weights,
                         outputs_from_nodes, pool_grads_as_resize, scatter_gather_nd)
from .pipeline import TorchPipeline
from .trt_ops import file_problems, unsupported_ops
from .validate import ValidationError, validate_fp16, validate_fp32

OPSET = 18
STAGE_PREFIX = ".export-"  # the staging folder inside the bundle (git-ignored)
# Graphs whose weights exceed this are saved as two files, graph and weights: protobuf cannot serialize past
# 2 GB, and onnx's in-memory tools (shape inference, checker) serialize the whole model. ViT-L-14's image
# encoder, energy and step graphs (~1.3 GB float32) are over it; their FP16 variants are not.
EXTERNAL_DATA_BYTES = 1 << 30
DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.FLOAT16: "float16"}


# Graphs whose activation bytes the manifest records: those of the Langevin loop (tr0n_rt/memory.py)
COUNTED_GRAPHS = ("generator", "energy", "step", "energy_grad", "update")


def tensor_specs(values) -> dict:
    return {v.name: {"dtype": DTYPES.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type)),
                     "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in values}


def check_dynamic_axes(spec: GraphSpec, inputs: dict) -> None:
    """Every axis the spec declares dynamic is symbolic in the exported graph: an exporter that
    specialises one (tracing unified it with a static size) would make a graph that rejects, say, K = 1."""
    missing = [name for name in spec.dynamic if name not in inputs]
    if missing:
        raise ValidationError(f"{spec.name}: the exported graph lacks the input(s) {', '.join(missing)}; this is an "
                              "exporter fault (report it with the torch version)")
    fixed = [f"{name}[{axis}] = {inputs[name]['shape'][axis]} (declared {dim!r})"
             for name, axes in spec.dynamic.items() for axis, dim in axes.items()
             if not isinstance(inputs[name]["shape"][axis], str)]
    if fixed:
        raise ValidationError(f"{spec.name}: the export fixed axes declared dynamic: {', '.join(fixed)}; this is "
                              "an exporter fault (report it with the torch version); the graph would refuse "
                              "other sizes")


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the model's initializers as serialized (weights loaded in memory)."""
    return sum(t.ByteSize() for t in model.graph.initializer)


def save_graph(model: onnx.ModelProto, path: Path, external_data_threshold: int = EXTERNAL_DATA_BYTES) -> list[Path]:
    """Writes model to path atomically, and returns the files written. Weights beyond
    external_data_threshold bytes go to `{path.name}.data` beside the graph (protobuf cannot serialize a
    model past 2 GB). Saving with external data moves the weights out of the in-memory model."""
    data = path.with_name(f"{path.name}.data")
    if weight_bytes(model) <= external_data_threshold:
        with atomic_path(path) as tmp:
            onnx.save(model, str(tmp))
        data.unlink(missing_ok=True)  # an earlier export's weights: no longer read
        return [path]
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as stage:
        staged = Path(stage) / path.name  # the graph records its weights file by name: stage under final names
        onnx.save_model(model, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name)
        if not staged.with_name(data.name).exists():  # every tensor under onnx's 1 KB external-data minimum
            os.replace(staged, path)
            data.unlink(missing_ok=True)
            return [path]
        os.chmod(staged.with_name(data.name), staged.stat().st_mode & 0o777)  # onnx writes it owner-only
        os.replace(staged.with_name(data.name), data)
        os.replace(staged, path)
    return [path, data]


# The pipeline.json parts each graph (and the world's judge) is computed from: a partial re-export keeps
# the other graphs only if their parts did not change since they were exported.
GRAPH_PARTS = {**graph_parts(), "judge": ("judge",)}


def part_digests(pipeline_dir: Path, spec: dict) -> dict[str, str | None]:
    """part -> sha256 of its pipeline.json entry and of its weights file (None: the pipeline has no such
    part). What a graph was exported from, recorded in the manifest as export.parts."""
    out = {}
    for part in sorted({p for parts in GRAPH_PARTS.values() for p in parts}):
        entry = spec.get(part)
        if not entry:
            out[part] = None
            continue
        h = hashlib.sha256(json.dumps(entry, sort_keys=True).encode())
        weights = entry.get("weights") if isinstance(entry, dict) else None
        if weights:
            h.update(sha256_file(pipeline_dir / weights).encode())
        out[part] = h.hexdigest()
    return out


def stale_kept_graphs(old_parts: dict | None, parts: dict, keep: list[str]) -> dict[str, list[str]]:
    """Kept graph -> the parts that changed since it was exported (a bundle exported before parts were
    recorded cannot be checked: nothing is reported for it)."""
    if not old_parts:
        return {}
    changed = {p for p in parts if old_parts.get(p) != parts[p]}
    return {g: sorted(changed & set(GRAPH_PARTS.get(g, ()))) for g in keep if changed & set(GRAPH_PARTS.get(g, ()))}


def export_bundle(pipeline_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, fp16: bool = True,
                  validate: bool = True, progress: bool = False, graphs: list[str] | None = None,
                  fp16_strict: bool = True, external_data_threshold: int = EXTERNAL_DATA_BYTES) -> Path:
    """Exports every graph of the pipeline in pipeline_dir into out_dir (default: the same folder).
    fp16_strict=False records FP16 results outside tolerance instead of failing (random test models).
    A graph whose weights exceed external_data_threshold bytes keeps them in `{graph file}.data`, listed
    in the manifest's files like the graph itself."""
    pipeline_dir = Path(pipeline_dir)
    out = Path(out_dir) if out_dir is not None else pipeline_dir
    out.mkdir(parents=True, exist_ok=True)
    p = TorchPipeline.load(pipeline_dir)
    entries, files, report, judge = {}, {}, {}, None
    parts = part_digests(pipeline_dir, p.spec)  # recorded only if every graph in the bundle is known to match
    old = out / "manifest.json"
    if graphs and old.is_file():  # re-export some graphs of an existing bundle: keep the others
        m = read_manifest(out)
        keep = [g for g in m.get("graphs", {}) if g not in graphs]
        entries = {g: m["graphs"][g] for g in keep}
        report = {g: m["export"]["graphs"][g] for g in keep if g in m.get("export", {}).get("graphs", {})}
        judge = m.get("judge")
        kept = {f for g in keep for f in entries[g]["files"].values()}
        kept |= {f"{f}.data" for f in kept}  # their weights files, where they have them
        files = {f: meta for f, meta in m.get("files", {}).items() if f in kept or (judge and f == judge["file"])}
        old_parts = m.get("export", {}).get("parts")
        stale = stale_kept_graphs(old_parts, parts, keep + (["judge"] if judge and "judge" not in graphs else []))
        if not old_parts:  # kept graphs of unknown origin: claim nothing for them
            parts = None
        if stale:
            raise ConfigError(f"{pipeline_dir / 'pipeline.json'} changed since the bundle was exported: "
                              + "; ".join(f"{g} was exported from other {', '.join(parts)}" for g, parts in stale.items())
                              + f". Re-export those graphs too: --graphs {' '.join(sorted(set(graphs) | set(stale)))}")
    known = [s.name for s in graph_specs(p)] + (["judge"] if p.spec.get("judge") else [])
    unknown = sorted(set(graphs or ()) - set(known))
    if unknown:
        raise ConfigError(f"pipeline {p.name!r} has no graph(s) {', '.join(unknown)}; its graphs: {', '.join(known)}")
    for leftover in out.glob(f"{STAGE_PREFIX}*"):  # an export killed before its clean-up (SIGKILL, OOM)
        shutil.rmtree(leftover, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=out))  # renamed into `out` once everything passed
    try:
        _export_graphs(p, stage, graphs, fp16, validate, fp16_strict, external_data_threshold, progress,
                       entries, files, report)
        judge = _export_judge(p, pipeline_dir, stage, graphs, files, judge)
        tokenizer = _stage_companions(p, stage, files)
        # the pipeline's own files, if out holds them: all but the manifest, the bundle's files, and the weights
        # files an earlier export left beside a graph (moved aside below when no graph names them any more)
        graph_weights = {f"{name}.data" for name in files if name.endswith(".onnx")}
        sources = {f.name: file_entry(f) for f in sorted(out.iterdir())
                   if f.is_file() and not f.name.startswith(".") and f.name != "manifest.json"
                   and f.name not in files and f.name not in graph_weights}
        manifest = _manifest(p, entries, judge, files, report, validate, parts, tokenizer, sources)  # before `out` changes
        backup, moved = stage / ".replaced", []
        try:
            _move_into(stage, out, files, backup, moved)
            write_bytes(out / "manifest.json", manifest)
        except BaseException:  # a full disk or an interrupt: the old manifest must find its own files again
            _restore(backup, out, moved)
            raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out


def _stage_companions(p: TorchPipeline, stage: Path, files: dict) -> dict | None:
    """The format spec (SPEC_FILE) and the tokenizer's files into `stage`, listed in `files`; returns the
    manifest's tokenizer entry: a CLIP tokenizer names its BPE merges file (`bpe_file`), now in the bundle."""
    spec_source = Path(__file__).resolve().parents[1] / "docs" / "bundle-format.md"  # a wheel: tr0n_rt/docs
    shutil.copyfile(spec_source, stage / SPEC_FILE)
    files[SPEC_FILE] = file_entry(stage / SPEC_FILE)
    tokenizer = p.spec.get("tokenizer")
    if not tokenizer or tokenizer.get("kind") != "clip_bpe":
        return tokenizer
    from tr0n_rt.tokenizer import BPE_FILENAME, tokenizer_from_dict

    bpe = Path(tokenizer_from_dict(tokenizer).bpe_path)
    shutil.copyfile(bpe, stage / BPE_FILENAME)
    files[BPE_FILENAME] = file_entry(stage / BPE_FILENAME)
    return {"kind": "clip_bpe", "context_length": tokenizer.get("context_length", 77), "bpe_file": BPE_FILENAME}


def _manifest(p: TorchPipeline, entries: dict, judge, files: dict, report: dict, validate: bool,
              parts: dict | None, tokenizer: dict | None, sources: dict) -> bytes:
    """manifest.json's bytes (serialised here, so a bad value fails before the bundle is touched)."""
    import onnxruntime
    import torch

    manifest = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "spec": {"file": SPEC_FILE, "version": SCHEMA_VERSION},
        "name": p.name,
        "condition": {"kind": p.condition, "dim": p.translator.config.cond_dim, "classes": p.classes},
        "latent": {"dim": p.generator.latent.dim, "bounds": p.generator.latent.bounds},
        "mixture": {"components": p.translator.config.num_components},
        "image": {"size": p.generator.image_size, "channels": p.generator.channels},
        "tokenizer": tokenizer,
        "image_input": p.condition_model.image_input() if p.image_conditioning else None,
        "aesthetic": {"dim": p.translator.config.cond_dim} if p.aesthetic is not None else None,
        "augment": {**asdict(p.augment), "policy": list(p.augment.policy)},
        "sampling": p.sampling.to_dict(),
        "noise": {"scheme": "philox4x32-10", "version": noise.VERSION},
        "graphs": entries,
        "judge": judge,
        "onnxruntime": SESSION_SETTINGS,
        "files": files,
        "sources": sources,
        "export": {"exporter": "make_fx (symbolic, autograd traced) + torch.onnx.export(dynamo=True)",
                   "opset": OPSET, "torch": torch.__version__, "onnx": onnx.__version__,
                   "onnxruntime": onnxruntime.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "validated": validate, "tolerances": _tolerances(), "graphs": report, "parts": parts},
    }
    return (json.dumps(manifest, indent=2, default=float) + "\n").encode()  # default: numpy scalars


def _export_graphs(p: TorchPipeline, stage: Path, graphs, fp16: bool, validate: bool,
                   fp16_strict: bool, external_data_threshold: int, progress: bool, entries: dict, files: dict,
                   report: dict) -> None:
    """Exports, fixes, checks and validates each graph into `stage`; fills entries, files and report."""
    for spec in graph_specs(p):
        if graphs and spec.name not in graphs:
            continue
        tick = time.perf_counter()
        path = stage / f"{spec.name}.onnx"
        export_graph(p, spec, path, opset=OPSET)
        model = onnx.load(str(path))  # with its weights (written beside it by the exporter)
        folded = fold_expanded_weights(model)
        convs, pools = conv_grads_as_conv(model), pool_grads_as_resize(model)
        norms, routed = decompose_layer_norms(model), outputs_from_nodes(model)
        stripped = strip_build_metadata(model)  # build paths and stack traces stay on the build machine
        problems = (expanded_weight_reads(model) + unsupported_ops(model)
                    + scatter_gather_nd(model, allow_gather=spec.name == "text_encoder"))
        if problems:
            raise ValidationError(f"{spec.name}: graph has ops TensorRT/ORT handle badly: {problems[:5]}")
        entry = {"files": {"fp32": path.name}, "inputs": tensor_specs(model.graph.input),
                 "outputs": tensor_specs(model.graph.output)}
        check_dynamic_axes(spec, entry["inputs"])
        info = {"export_seconds": None, "expanded_weights_folded": folded, "conv_grads_as_conv": convs,
                "pool_grads_as_resize": pools, "layer_norms_decomposed": norms, "outputs_through_identity": routed,
                "build_metadata_removed": stripped}
        path16 = stage / f"{spec.name}.fp16.onnx"
        model16 = fp16_mod.to_fp16(model, spec.name) if fp16 else None  # before save_graph may move the weights out
        written = save_graph(model, path, external_data_threshold)
        del model  # validation reads the files: free the protos before ONNX Runtime loads its own copy
        if fp16:
            written += save_graph(model16, path16, external_data_threshold)
            entry["files"]["fp16"] = path16.name
            del model16
        files.update({f.name: file_entry(f) for f in written})
        if spec.name in COUNTED_GRAPHS:  # the planner's bytes (tr0n_rt/memory.py), from each file as written
            fixed = {"components": p.translator.config.num_components}
            entry["activations"] = {prec: [[int(c) for c in row] for row in activation_rows(f, fixed)]
                                    for prec, f in (("fp32", path), ("fp16", path16)) if prec == "fp32" or fp16}
        for f in [path] + ([path16] if fp16 else []):
            not_ready = file_problems(f)
            if not_ready:
                raise ValidationError(f"{f.name}: TensorRT's ONNX parser would refuse it ({len(not_ready)} problems): "
                                      f"{'; '.join(not_ready[:5])}. This is an export fault: fix the graph in "
                                      "export/onnx_fixes.py or export/fp16.py (the table: export/trt_ops.py)")
        if validate:
            info["fp32"] = validate_fp32(p, spec, path)
            if fp16:
                info["fp16"] = validate_fp16(p, spec, path16, path, strict=fp16_strict)
        info["export_seconds"] = round(time.perf_counter() - tick, 1)
        entries[spec.name] = entry
        report[spec.name] = info
        if progress:
            print(f"  {spec.name}: {info['export_seconds']} s" + (
                f", fp32 max rel err {info['fp32']['max_rel_err']:.1e}" if validate else ""), flush=True)


def _export_judge(p: TorchPipeline, pipeline_dir: Path, stage: Path, graphs, files: dict, judge):
    """judge.onnx into `stage` when the pipeline names a judge (and it is asked for); its manifest entry."""
    if p.spec.get("judge") and (not graphs or "judge" in graphs):
        from .judge_export import export_judge

        name, judge = export_judge(pipeline_dir, stage)
        files[name] = file_entry(stage / name)
    return judge


def _move_into(stage: Path, out: Path, files: dict, backup: Path, moved: list[str]) -> None:
    """Renames every staged file into `out`, appending each name to `moved` once it is there. What they
    replace, and the `.data` an earlier export left beside a graph that has none this time (nothing lists
    it any more), is moved into `backup` first, so that _restore can undo a move stopped at any point
    until the new manifest is written."""
    backup.mkdir()
    for f in sorted(p for p in stage.iterdir() if p != backup):
        stale = out / f"{f.name}.data"
        for old in ((out / f.name),) + ((stale,) if f.suffix == ".onnx" and stale.name not in files else ()):
            if old.exists():
                os.replace(old, backup / old.name)
        os.replace(f, out / f.name)
        moved.append(f.name)


def _restore(backup: Path, out: Path, moved: list[str]) -> None:
    """Undoes _move_into: the new files leave `out`, the replaced ones come back."""
    for name in moved:
        (out / name).unlink(missing_ok=True)
    if backup.is_dir():
        for f in backup.iterdir():
            os.replace(f, out / f.name)


def _tolerances() -> dict:
    from . import validate as v

    return {"fp32_rel_err": v.FP32_RTOL, "fp16_energy_rel_err": v.FP16_ENERGY_RTOL,
            "fp16_grad_cosine": v.FP16_GRAD_COSINE, "fp16_adam_step_descent": v.FP16_ADAM_STEP_DESCENT,
            "fp16_rel_err": v.FP16_RTOL}
