"""Whether a graph, as a file, a session or an engine, is what the bundle's manifest declares: its inputs
and outputs (names, dtypes, ranks, fixed dims), the weights files it reads, and the shape of each call.
Shared by the onnxruntime and TensorRT backends; a graph's IO comes in as name -> (dtype, shape) with
dims int (fixed), str (symbolic) or None (dynamic, unnamed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..bundle import Bundle
from ..errors import BackendError, BundleError


def check_shape(graph: str, name: str, shape, dims: list) -> None:
    """BackendError unless shape fits the manifest's dims (ints fixed, strings dynamic)."""
    if len(shape) != len(dims) or any(isinstance(d, int) and d != n for d, n in zip(dims, shape)):
        hint = ""
        if graph == "step" and len(dims) == 3 == len(shape) and isinstance(dims[1], int) and dims[1] != shape[1]:
            hint = (f": this step graph takes exactly {dims[1]} mixture components, and sample mode and prior "
                    "init use 1. Re-export the bundle (tr0n-rt export): exports since 2026-12-05 keep K dynamic")
        raise BackendError(f"input {name!r} of graph {graph!r} has shape {list(shape)}; the bundle declares "
                           f"{dims} (strings are dynamic axes){hint}")


def check_io(bundle: Bundle, graph: str, path: Path, inputs: dict, outputs: dict) -> None:
    """BundleError unless the graph's inputs and outputs are the manifest's: names, dtypes, ranks, static dims.
    A dim the manifest declares dynamic ("batch", "copies") must not be fixed in the graph."""
    declared = bundle.io(graph)
    problems = []
    for kind, want, have in (("input", declared[0], inputs), ("output", declared[1], outputs)):
        for name in want:
            if name not in have:
                problems.append(f"{kind} {name!r} is declared in the manifest but the graph has none "
                                f"(graph {kind}s: {', '.join(have)})")
        for name in have:
            if name not in want:
                problems.append(f"graph {kind} {name!r} is not declared in the manifest")
        for name in [n for n in want if n in have]:
            problems += [f"{kind} {name!r}: {p}" for p in tensor_problems(want[name], *have[name])]
    if problems:
        raise BundleError(f"bundle {bundle.folder}: graph {graph!r} ({path.name}) does not match the manifest: "
                          f"{'; '.join(problems)}. The bundle is inconsistent: re-export it with `tr0n-rt export`")


def tensor_problems(spec: dict, dtype: str, shape: list | None) -> list[str]:
    """What differs between a manifest tensor spec ({dtype, shape}) and a graph's (dtype, shape)."""
    problems = []
    try:
        want = np.dtype(spec["dtype"]).name
    except (TypeError, KeyError):
        return [f"manifest dtype {spec.get('dtype')!r} is not a numpy dtype name"]
    if want != dtype:
        problems.append(f"manifest says {want}, the graph has {dtype}")
    dims = spec.get("shape")
    if shape is None or not isinstance(dims, list):
        return problems if isinstance(dims, list) else problems + [f"manifest shape {dims!r} is not a list"]
    if len(dims) != len(shape):
        return problems + [f"manifest says rank {len(dims)} {dims}, the graph has rank {len(shape)} {shape}"]
    for axis, (w, h) in enumerate(zip(dims, shape)):
        if isinstance(w, int) and isinstance(h, int) and w != h:
            problems.append(f"axis {axis} is {h} in the graph, {w} in the manifest")
        elif isinstance(w, str) and isinstance(h, int):
            problems.append(f"axis {axis} is fixed to {h} in the graph, dynamic {w!r} in the manifest")
    return problems


def check_data_files(bundle: Bundle, graph: str, path: Path, data_files: list[str]) -> None:
    """BundleError unless every weights file the graph reads is listed in the manifest's files (and
    therefore checked against its sha256 on load)."""
    unlisted = [f for f in data_files if f not in bundle.manifest["files"]]
    if unlisted:
        raise BundleError(f"bundle {bundle.folder}: graph {graph!r} ({path.name}) reads weights from "
                          f"{', '.join(unlisted)}, which the manifest does not list: the bundle is inconsistent; "
                          "re-export it with `tr0n-rt export`")
