"""`tr0n-rt export`: a torch pipeline folder -> a validated bundle (manifest.json + ONNX graphs).

Each graph is traced (gradient included), exported with a dynamic batch, fixed (onnx_fixes), checked
for ops TensorRT cannot take, validated against torch, converted to FP16 and validated again. Every file
is first written to a staging folder inside the bundle; only when all graphs have passed are they moved
into place (same file system: renames) and the manifest written last. A failed export leaves the bundle
as it was: the previous graphs and manifest, still loadable.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import onnx

from tr0n_rt.atomic import atomic_path, write_bytes
from tr0n_rt.bundle import FORMAT, SCHEMA_VERSION, file_entry
from tr0n_rt.errors import ConfigError

from . import fp16 as fp16_mod
from .graphs import export_graph, graph_specs
from .onnx_fixes import (conv_grads_as_conv, expanded_weight_reads, fold_expanded_weights, pool_grads_as_resize,
                         scatter_gather_nd, vendor_ops)
from .pipeline import TorchPipeline
from .validate import ValidationError, validate_fp16, validate_fp32

OPSET = 18
STAGE_PREFIX = ".export-"  # the staging folder inside the bundle (git-ignored)
# Graphs whose weights exceed this are saved as two files, graph and weights: protobuf cannot serialize past
# 2 GB, and onnx's in-memory tools (shape inference, checker) serialize the whole model. ViT-L-14's image
# encoder, energy and step graphs (~1.3 GB float32) are over it; their FP16 variants are not.
EXTERNAL_DATA_BYTES = 1 << 30
DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.FLOAT16: "float16"}


def tensor_specs(values) -> dict:
    return {v.name: {"dtype": DTYPES.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type)),
                     "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in values}


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
    old = out / "manifest.json"
    if graphs and old.is_file():  # re-export some graphs of an existing bundle: keep the others
        m = json.loads(old.read_text())
        keep = [g for g in m.get("graphs", {}) if g not in graphs]
        entries = {g: m["graphs"][g] for g in keep}
        report = {g: m["export"]["graphs"][g] for g in keep if g in m.get("export", {}).get("graphs", {})}
        judge = m.get("judge")
        kept = {f for g in keep for f in entries[g]["files"].values()}
        kept |= {f"{f}.data" for f in kept}  # their weights files, where they have them
        files = {f: meta for f, meta in m.get("files", {}).items() if f in kept or (judge and f == judge["file"])}
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
        manifest = _manifest(p, entries, judge, files, report, validate)  # before anything in `out` changes
        _move_into(stage, out, files)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    write_bytes(out / "manifest.json", manifest)
    return out


def _manifest(p: TorchPipeline, entries: dict, judge, files: dict, report: dict, validate: bool) -> bytes:
    """manifest.json's bytes (serialised here, so a bad value fails before the bundle is touched)."""
    import onnxruntime
    import torch

    tokenizer = p.spec.get("tokenizer")
    manifest = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "name": p.name,
        "condition": {"kind": p.condition, "dim": p.translator.config.cond_dim, "classes": p.classes},
        "latent": {"dim": p.generator.latent.dim, "bounds": p.generator.latent.bounds},
        "mixture": {"components": p.translator.config.num_components},
        "image": {"size": p.generator.image_size, "channels": p.generator.channels},
        "tokenizer": tokenizer,
        "image_input": p.condition_model.image_input() if p.image_conditioning else None,
        "aesthetic": {"dim": p.translator.config.cond_dim} if p.aesthetic is not None else None,
        "augment": {**asdict(p.augment), "policy": list(p.augment.policy)},
        "sampling": p.sampling.to_dict(),
        "graphs": entries,
        "judge": judge,
        "files": files,
        "export": {"exporter": "make_fx (symbolic, autograd traced) + torch.onnx.export(dynamo=True)",
                   "opset": OPSET, "torch": torch.__version__, "onnx": onnx.__version__,
                   "onnxruntime": onnxruntime.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "validated": validate, "tolerances": _tolerances(), "graphs": report},
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
        problems = (expanded_weight_reads(model) + vendor_ops(model)
                    + scatter_gather_nd(model, allow_gather=spec.name == "text_encoder"))
        if problems:
            raise ValidationError(f"{spec.name}: graph has ops TensorRT/ORT handle badly: {problems[:5]}")
        entry = {"files": {"fp32": path.name}, "inputs": tensor_specs(model.graph.input),
                 "outputs": tensor_specs(model.graph.output)}
        info = {"export_seconds": None, "expanded_weights_folded": folded, "conv_grads_as_conv": convs,
                "pool_grads_as_resize": pools}
        path16 = stage / f"{spec.name}.fp16.onnx"
        model16 = fp16_mod.to_fp16(model) if fp16 else None  # before save_graph may move the weights out
        written = save_graph(model, path, external_data_threshold)
        del model  # validation reads the files: free the protos before ONNX Runtime loads its own copy
        if fp16:
            written += save_graph(model16, path16, external_data_threshold)
            entry["files"]["fp16"] = path16.name
            del model16
        files.update({f.name: file_entry(f) for f in written})
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


def _move_into(stage: Path, out: Path, files: dict) -> None:
    """Renames every staged file into `out`. A graph exported without a weights file this time drops the
    `.data` an earlier export left beside it (nothing lists it any more)."""
    for f in sorted(stage.iterdir()):
        os.replace(f, out / f.name)
        stale = out / f"{f.name}.data"
        if f.suffix == ".onnx" and stale.name not in files:
            stale.unlink(missing_ok=True)


def _tolerances() -> dict:
    from . import validate as v

    return {"fp32_rel_err": v.FP32_RTOL, "fp16_energy_rel_err": v.FP16_ENERGY_RTOL,
            "fp16_grad_cosine": v.FP16_GRAD_COSINE, "fp16_rel_err": v.FP16_RTOL}
