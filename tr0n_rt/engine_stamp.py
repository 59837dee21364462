"""The engine stamp: what a TensorRT plan was built for, as the manifest's `engines` section records it
({graph: {precision: stamp}}), and whether it may run here. Written once here for both sides: the
build (export/engines.py) makes stamps with built_stamp / failed_stamp, the runtime
(backends/tensorrt.py) checks them before any plan is deserialised. Imports no TensorRT.

A stamp:
    built   file, sha256, bytes, precision, tensorrt (version), gpu (name), compute_capability (sm_XY),
            hardware_compatible, version_compatible, profiles [{batch, copies?, components?, shapes}]
            (engine_profiles.py), builder (settings), source {file, sha256} (the ONNX graph it was built
            from), built (UTC)
    failed  failed (message), precision, tensorrt, gpu, compute_capability

Where a plan runs:
    GPU       default plans: only the compute capability that built them; hardware-compatible plans
              (Ampere+ level): any GPU of sm_80 or newer
    TensorRT  default plans: only the version (major.minor.patch) that built them; version-compatible
              plans: the same or a newer version of the same major
"""
from __future__ import annotations

import re
import time
from pathlib import Path

from .bundle import Bundle, graph_fingerprint
from .errors import BackendError, ConfigError

REBUILD = "rebuild with `tr0n-rt build {bundle}`"


def parse_version(version: str) -> tuple[int, ...]:
    """'10.3.0.26' -> (10, 3, 0, 26); non-numeric tails ('10.8.0.post1') are dropped."""
    parts = []
    for p in str(version).split("."):
        m = re.match(r"\d+", p)
        if not m:
            break
        parts.append(int(m.group()))
    if not parts:
        raise ConfigError(f"not a TensorRT version: {version!r}")
    return tuple(parts)


def short_version(version: str) -> str:
    return ".".join(map(str, parse_version(version)[:2]))


def sm_name(cc) -> str:
    """A compute capability as 'sm_XY': from 'sm_90', '9.0', (9, 0) or 90."""
    if isinstance(cc, (tuple, list)) and len(cc) == 2:
        return f"sm_{int(cc[0])}{int(cc[1])}"
    s = str(cc).strip().lower().removeprefix("sm_").removeprefix("sm")
    if re.fullmatch(r"\d+\.\d", s):
        major, minor = s.split(".")
        return f"sm_{major}{minor}"
    if re.fullmatch(r"\d{2,3}", s):
        return f"sm_{s}"
    raise ConfigError(f"not a compute capability: {cc!r} (expected e.g. 'sm_87', '8.7' or (8, 7))")


def sm_number(cc) -> int:
    """'sm_87' -> 87, 'sm_100' -> 100."""
    return int(sm_name(cc)[3:])


# --- making stamps (the build side) ----------------------------------------------------------------------
def built_stamp(plan_file: str, file_entry: dict, profiles: list[dict], settings: dict, trt_version: str,
                gpu_name: str, compute_capability, source_file: str, source_sha256: str) -> dict:
    """The stamp of a plan just built here. file_entry: the plan's {sha256, bytes}; settings: the
    builder's (export/engines.py builder_settings)."""
    return {"file": plan_file, **file_entry, "precision": settings["precision"], "tensorrt": trt_version,
            "gpu": gpu_name, "compute_capability": sm_name(compute_capability),
            "hardware_compatible": settings["hardware_compatible"],
            "version_compatible": settings["version_compatible"], "profiles": profiles, "builder": settings,
            "source": {"file": source_file, "sha256": source_sha256},
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def failed_stamp(message: str, precision: str, trt_version: str, gpu_name: str, compute_capability) -> dict:
    """The record of a build that failed here (the runtime then runs that graph another way)."""
    return {"failed": message, "precision": precision, "tensorrt": trt_version, "gpu": gpu_name,
            "compute_capability": sm_name(compute_capability)}


# --- checking stamps (the runtime) -----------------------------------------------------------------------
def check_engine_compatible(stamp: dict, trt_version: str, gpu_name: str, compute_capability,
                            bundle: str | Path = "BUNDLE") -> None:
    """BackendError unless a plan stamped `stamp` may be deserialised by this TensorRT on this GPU
    (module docstring)."""
    if "failed" in stamp:
        raise BackendError(f"the {stamp.get('precision', '')} engine of this graph failed to build "
                           f"({stamp['failed']}); {REBUILD.format(bundle=bundle)}")
    built_sm, here_sm = sm_name(stamp["compute_capability"]), sm_name(compute_capability)
    built_v, here_v = parse_version(stamp["tensorrt"]), parse_version(trt_version)
    what = f"engine built for {built_sm} with TensorRT {short_version(stamp['tensorrt'])}"
    how = REBUILD.format(bundle=bundle)
    if stamp.get("hardware_compatible"):
        if sm_number(here_sm) < 80:
            raise BackendError(f"{what} (hardware-compatible, Ampere or newer); this GPU ({gpu_name}) is {here_sm}: "
                               f"{how}")
    elif built_sm != here_sm:
        raise BackendError(f"{what}; this GPU ({gpu_name}) is {here_sm}: {how}")
    if stamp.get("version_compatible"):
        if here_v[0] != built_v[0] or here_v[:3] < built_v[:3]:
            raise BackendError(f"{what} (version-compatible within TensorRT {built_v[0]}.x, from "
                               f"{'.'.join(map(str, built_v[:3]))}); this is TensorRT {trt_version}: {how}")
    elif here_v[:3] != built_v[:3]:
        raise BackendError(f"{what}; this is TensorRT {short_version(trt_version)} ({trt_version}): {how}")


def check_engine_source(bundle: Bundle, graph: str, stamp: dict) -> None:
    """BackendError if the engine was built from another version of the graph than the bundle's own."""
    source = stamp.get("source", {})
    files = bundle.manifest["graphs"][graph]["files"]
    current = graph_fingerprint(bundle.manifest, source.get("file", ""))
    if source.get("file") not in files.values() or current != source.get("sha256"):
        raise BackendError(f"the {graph} engine was built from a different {source.get('file', 'graph')} than the "
                           f"bundle now holds (re-exported since?); {REBUILD.format(bundle=bundle.folder)}")
