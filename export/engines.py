"""`tr0n-rt build`: a bundle's ONNX graphs -> TensorRT engines (`<graph>.<precision>.plan`), stamped into
the manifest. Needs TensorRT and polygraphy; imports TensorRT lazily and never imports torch.

Networks are parsed strongly typed: every layer runs in the type the graph gives it, so the FP16 graphs
(FP16 compute, float32 islands and float32 IO, export/fp16.py) build the same way on TensorRT 10 (JetPack
6) and 11, which has no FP16 builder flag. TF32 stays off, so float32 islands are true float32.

Profiles are static (min = opt = max), one per batch size x copies x components (tr0n_rt/engine_profiles.py):
a static shape is what a CUDA graph replays, and static engines pick the fastest kernels for exactly
that shape. The manifest gains a top-level `engines` section, {graph: {precision: stamp}}, the stamp
as tr0n_rt/engine_stamp.py defines it (what the plan was built for, and from which graph), and every
plan file is listed in `files` (sha256, bytes), so load_bundle checks it like any graph.
"""
from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

from tr0n_rt.atomic import write_bytes, write_json
from tr0n_rt.backends.tensorrt import import_tensorrt
from tr0n_rt.bundle import PRECISIONS, file_entry, graph_fingerprint, load_bundle, read_manifest
from tr0n_rt.engine_profiles import concrete_shape
from tr0n_rt.engine_stamp import built_stamp, failed_stamp
from tr0n_rt.errors import BackendError, BundleError, ConfigError
from tr0n_rt.graphs import DYNAMIC_AXES

DEFAULT_BATCH_SIZES = (1, 8, 32)
MAX_PROFILES = 64  # TensorRT's builder takes many, but each one is built and timed: keep builds bounded


def _values(name: str, value) -> list[int]:
    values = [value] if isinstance(value, int) else list(value)
    if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
        raise ConfigError(f"{name} must be positive integers, got {value!r}")
    return sorted(set(values))


def plan_profiles(manifest: dict, graph: str, batch_sizes=DEFAULT_BATCH_SIZES, copies=None,
                  components=None) -> list[dict]:
    """Static optimisation profiles of one graph: one per combination of the axes its inputs use.

    copies: int or ints (default: the bundle's sampling copies, at least 1; 0 copies run as 1).
    components: int or ints (default: 1 and the mixture's K: sample mode and prior init use K = 1).
    Returns [{"batch": b, "copies": a (if used), "components": k (if used), "shapes": {input: dims}}]."""
    if graph not in manifest.get("graphs", {}):
        raise BundleError(f"the bundle has no {graph!r} graph (it has: {', '.join(manifest.get('graphs', {}))})")
    inputs = manifest["graphs"][graph]["inputs"]
    used = {d for spec in inputs.values() for d in spec["shape"] if isinstance(d, str)}
    unknown = used - set(DYNAMIC_AXES)
    if unknown:
        raise BundleError(f"graph {graph!r} has dynamic axes {sorted(unknown)} that engines cannot profile "
                          f"(known: {', '.join(DYNAMIC_AXES)}); re-export the bundle")
    choices = {
        "batch": _values("batch sizes", batch_sizes),
        "copies": _values("copies", copies if copies is not None else max(1, manifest["sampling"].get("copies", 1))),
        "components": _values("components", components if components is not None
                              else {1, manifest["mixture"]["components"]}),
    }
    axes = [a for a in DYNAMIC_AXES if a in used]
    profiles = []
    for combo in itertools.product(*(choices[a] for a in axes)):
        sizes = dict(zip(axes, combo))
        profiles.append({**sizes, "shapes": {n: concrete_shape(s["shape"], sizes) for n, s in inputs.items()}})
    if len(profiles) > MAX_PROFILES:
        raise ConfigError(f"graph {graph!r} would get {len(profiles)} profiles (> {MAX_PROFILES}); "
                          "ask for fewer batch sizes, copies or components")
    return profiles


def builder_settings(precision: str = "fp16", opt_level: int = 3, workspace_mib: int | None = None,
                     timing_cache: str | os.PathLike | None = None, hardware_compatible: bool = False,
                     version_compatible: bool = False) -> dict:
    """The builder settings, checked, as recorded in every stamp."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use one of: {', '.join(PRECISIONS)}")
    if not isinstance(opt_level, int) or not 0 <= opt_level <= 5:
        raise ConfigError(f"builder optimisation level must be 0..5 (TensorRT's default is 3), got {opt_level!r}")
    if workspace_mib is not None and (not isinstance(workspace_mib, int) or workspace_mib < 1):
        raise ConfigError(f"workspace must be a positive number of MiB, got {workspace_mib!r}")
    return {"precision": precision, "strongly_typed": True, "tf32": False, "opt_level": opt_level,
            "workspace_mib": workspace_mib, "timing_cache": str(timing_cache) if timing_cache else None,
            "hardware_compatible": bool(hardware_compatible), "version_compatible": bool(version_compatible)}


def polygraphy_config(trt, profiles: list[dict], settings: dict):
    """A polygraphy CreateConfig for these profiles and settings (no precision flag: strongly typed)."""
    from polygraphy.backend.trt import CreateConfig, Profile

    trt_profiles = []
    for p in profiles:
        profile = Profile()
        for name, shape in p["shapes"].items():
            profile.add(name, min=shape, opt=shape, max=shape)
        trt_profiles.append(profile)
    kwargs = {"profiles": trt_profiles, "builder_optimization_level": settings["opt_level"], "tf32": False}
    if settings["workspace_mib"]:
        kwargs["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: settings["workspace_mib"] << 20}
    if settings["timing_cache"] and Path(settings["timing_cache"]).is_file():
        kwargs["load_timing_cache"] = settings["timing_cache"]
    if settings["hardware_compatible"]:
        kwargs["hardware_compatibility_level"] = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if settings["version_compatible"]:
        kwargs["version_compatible"] = True
    return CreateConfig(**kwargs)


def stamp_record(plan: Path, profiles: list[dict], settings: dict, trt_version: str, gpu_name: str,
                 compute_capability, source_file: str, source_sha256: str) -> dict:
    """The stamp of a plan file just written (engine_stamp.built_stamp, with the file's sha256 and bytes)."""
    return built_stamp(plan.name, file_entry(plan), profiles, settings, trt_version, gpu_name, compute_capability,
                       source_file, source_sha256)


def update_manifest(bundle_dir: str | os.PathLike, stamps: dict) -> dict:
    """Merges {graph: {precision: stamp}} into manifest.json's `engines` and lists (or, for failed builds,
    unlists) the plan files in `files`; rewrites the manifest atomically. Returns the new manifest."""
    path = Path(bundle_dir) / "manifest.json"
    manifest = read_manifest(bundle_dir)  # size, parse, version and schema, typed errors
    engines = manifest.setdefault("engines", {})
    for graph, by_precision in stamps.items():
        if graph not in manifest.get("graphs", {}):
            raise BundleError(f"{path} has no {graph!r} graph to stamp an engine for")
        for precision, stamp in by_precision.items():
            engines.setdefault(graph, {})[precision] = stamp
            plan = f"{graph}.{precision}.plan"
            if "failed" in stamp:
                manifest["files"].pop(plan, None)
            else:
                manifest["files"][stamp["file"]] = {"sha256": stamp["sha256"], "bytes": stamp["bytes"]}
    write_json(path, manifest)
    return manifest


def memory_profiles(manifest: dict, budget: float, batch_sizes, copies, precision: str) -> dict:
    """What to build for a memory budget (tr0n_rt/memory.py): the plan of each requested batch at each A ->
    {"plans": [...], "batch_sizes": the planned sub-batches, "copies": {graph: copies axis sizes},
    "skip": graphs no plan runs (the step graph when every plan is chunked)}."""
    from tr0n_rt.memory import MemoryModel, plan

    model = MemoryModel(manifest, precision)
    if not model.counted:
        raise BundleError("this bundle's manifest has no activation counts: re-export it with this tr0n-rt to build "
                          "for a memory budget, or build without --memory-budget")
    a_values = _values("copies", copies if copies is not None else max(1, manifest["sampling"].get("copies", 1)))
    plans = [(b, a, plan(model, budget, b, a)) for b in _values("batch sizes", batch_sizes) for a in a_values]
    # as_dict's batch is the planned sub-batch; "rows" is the batch asked for
    chunks = sorted({p.chunk for *_, p in plans if p.chunk is not None})
    step_a = sorted({a for _, a, p in plans if p.chunk is None})
    return {"plans": [{"rows": b, "copies": a, **p.as_dict(b)} for b, a, p in plans],
            "batch_sizes": sorted({p.batch for *_, p in plans}),
            "copies": {"step": step_a or a_values, "energy_grad": chunks or [1],
                       "energy": sorted(set(chunks) | set(step_a))},
            "skip": [] if step_a else ["step"]}


def build_engines(bundle_dir, batch_sizes=DEFAULT_BATCH_SIZES, copies=None, components=None, precision: str = "fp16",
                  opt_level: int = 3, workspace_mib: int | None = None, timing_cache=None,
                  hardware_compatible: bool = False, version_compatible: bool = False, graphs=None,
                  keep_going: bool = False, progress: bool = False, memory_budget: float | None = None) -> dict:
    """Builds one engine per graph of the bundle (or of `graphs`) from its `precision` ONNX graphs.

    Plans are written atomically beside the graphs, then stamped into the manifest. Jetson: pass
    workspace_mib (e.g. 1024) or the builder may be killed for memory. timing_cache: a file that is
    read if it exists and updated after each build (reused across graphs and rebuilds). keep_going:
    record a graph whose build fails (e.g. an op TensorRT cannot take in the step's gradient) and go on;
    the runtime then runs that graph another way (see choose_step_path). memory_budget (bytes): profiles
    for the memory plans of the requested batch sizes and copies (memory_profiles): the planned sub-batches,
    energy_grad for the planned chunks, no step engine when no plan runs it. Returns {"engines": stamps,
    "failed": {graph: message}, "seconds": {graph: s}} (and "memory": memory_profiles' plans)."""
    settings = builder_settings(precision, opt_level, workspace_mib, timing_cache, hardware_compatible,
                                version_compatible)
    trt = import_tensorrt()
    from polygraphy.backend.trt import engine_bytes_from_network, network_from_onnx_path

    from tr0n_rt.backends.cuda import current_gpu

    bundle = load_bundle(bundle_dir)
    folder = bundle.folder
    names = list(graphs) if graphs else list(bundle.manifest["graphs"])
    for g in names:
        if not bundle.has(g):
            raise BundleError(f"bundle {folder} has no {g!r} graph (it has: {', '.join(bundle.manifest['graphs'])})")
    planned = None
    if memory_budget is not None:
        planned = memory_profiles(bundle.manifest, memory_budget, batch_sizes, copies, precision)
        names = [g for g in names if g not in planned["skip"]]
        if progress:
            for p in planned["plans"]:
                chunks = "" if p["chunk"] is None else f", chunks of {p['chunk']}"
                print(f"  plan: A = {p['copies']}: {p['path']}, sub-batch {p['batch']}{chunks}", flush=True)
    gpu_name, cc = current_gpu()
    stamps, failed, seconds = {}, {}, {}
    for graph in names:
        tick = time.perf_counter()
        source = bundle.graph_file(graph, precision)
        if planned is not None:
            profiles = plan_profiles(bundle.manifest, graph, planned["batch_sizes"],
                                     planned["copies"].get(graph, copies), components)
        else:
            profiles = plan_profiles(bundle.manifest, graph, batch_sizes, copies, components)
        plan = folder / f"{graph}.{precision}.plan"
        try:
            network = network_from_onnx_path(str(source), strongly_typed=True)
            data = engine_bytes_from_network(network, config=polygraphy_config(trt, profiles, settings),
                                             save_timing_cache=settings["timing_cache"])
            write_bytes(plan, bytes(data))
        except Exception as e:  # polygraphy raises PolygraphyException; TensorRT its own errors
            message = f"{type(e).__name__}: {e}".strip()[:500]
            if not keep_going:
                raise BackendError(f"TensorRT {trt.__version__} could not build the {graph} engine from {source.name}: "
                                   f"{message}") from None
            failed[graph] = message
            stamps[graph] = {precision: failed_stamp(message, precision, trt.__version__, gpu_name, cc)}
            continue
        seconds[graph] = round(time.perf_counter() - tick, 1)
        stamp = stamp_record(plan, profiles, settings, trt.__version__, gpu_name, cc, source.name,
                             graph_fingerprint(bundle.manifest, source.name))
        stamps[graph] = {precision: stamp}
        if progress:
            print(f"  {graph}: {plan.name}, {len(profiles)} profile(s), {stamp['bytes'] / 2**20:.1f} MiB, "
                  f"{seconds[graph]} s", flush=True)
    update_manifest(folder, stamps)
    out = {"engines": stamps, "failed": failed, "seconds": seconds}
    return out if planned is None else {**out, "memory": planned["plans"]}
