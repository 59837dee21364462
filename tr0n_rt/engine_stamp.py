"""The engine stamp: what a TensorRT plan was built for, as the manifest's `engines` section records it
({graph: {precision: stamp}}), and whether it may run here. Written once here for both sides: the
build (export/engines.py) makes stamps with built_stamp / failed_stamp, the runtime
(backends/tensorrt.py) checks them before any plan is deserialised. Imports no TensorRT.

A stamp:
    built   file, sha256, bytes, precision, tensorrt (version), gpu (name), compute_capability (sm_XY),
            platform (OS-architecture, e.g. Linux-x86_64, Linux-aarch64), hardware_compatible,
            version_compatible, profiles [{batch, copies?, components?, shapes}] (engine_profiles.py),
            builder (settings), source {file, sha256} (the ONNX graph it was built from), built (UTC)
    failed  failed (message), precision, tensorrt, gpu, compute_capability, platform

Where a plan runs (TensorRT 11.1 "Engine Compatibility", 11.4 support matrix "Engine Portability"):
    platform  only the OS and CPU architecture that built it (serialized engines are not portable across
              platforms); stamps from before the platform was recorded are refused too: rebuild
    GPU       default plans: only the compute capability that built them; hardware-compatible plans
              (Ampere+ level): any GPU of sm_80 or newer
    TensorRT  default plans: only the version (major.minor.patch) that built them; version-compatible
              plans: the same or a newer version of their major, and across majors exactly the
              documented pairs, CROSS_MAJOR (built with 10.x: any 11.x)
"""
from __future__ import annotations

import platform
import re
import time
from pathlib import Path

from .bundle import Bundle, graph_fingerprint
from .errors import BackendError, ConfigError

REBUILD = "rebuild with `tr0n-rt build {bundle}`"
# Version-compatible plans built with major M also run on major CROSS_MAJOR[M] (and no other major).
CROSS_MAJOR = {8: 10, 10: 11}


class EngineMismatch(BackendError):
    """A plan built for another platform, GPU or TensorRT than this one: rebuild it here."""


def this_platform() -> str:
    """The OS and CPU architecture as stamps record them: 'Linux-x86_64', 'Linux-aarch64', 'Windows-AMD64'."""
    return f"{platform.system()}-{platform.machine()}"


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
            "gpu": gpu_name, "compute_capability": sm_name(compute_capability), "platform": this_platform(),
            "hardware_compatible": settings["hardware_compatible"],
            "version_compatible": settings["version_compatible"], "profiles": profiles, "builder": settings,
            "source": {"file": source_file, "sha256": source_sha256},
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def failed_stamp(message: str, precision: str, trt_version: str, gpu_name: str, compute_capability) -> dict:
    """The record of a build that failed here (the runtime then runs that graph another way)."""
    return {"failed": message, "precision": precision, "tensorrt": trt_version, "gpu": gpu_name,
            "compute_capability": sm_name(compute_capability), "platform": this_platform()}


# --- checking stamps (the runtime) -----------------------------------------------------------------------
def runs_on_tensorrt(built: str, here: str, version_compatible: bool) -> bool:
    """Whether a plan built with TensorRT `built` may be deserialised by TensorRT `here` (module docstring)."""
    b, h = parse_version(built)[:3], parse_version(here)[:3]
    if not version_compatible:
        return h == b
    if h[0] == b[0]:
        return h >= b
    return CROSS_MAJOR.get(b[0]) == h[0]


def check_engine_compatible(stamp: dict, trt_version: str, gpu_name: str, compute_capability,
                            bundle: str | Path = "BUNDLE", here_platform: str | None = None) -> None:
    """EngineMismatch unless a plan stamped `stamp` may be deserialised by this TensorRT on this GPU and
    platform (here_platform: default this_platform()); BackendError for a build that failed."""
    how = REBUILD.format(bundle=bundle)
    if "failed" in stamp:
        raise BackendError(f"the {stamp.get('precision', '')} engine of this graph failed to build "
                           f"({stamp['failed']}); {how}")
    here_platform = here_platform or this_platform()
    built_sm, here_sm = sm_name(stamp["compute_capability"]), sm_name(compute_capability)
    built_v = parse_version(stamp["tensorrt"])
    what = f"engine built for {built_sm} with TensorRT {short_version(stamp['tensorrt'])}"
    if "platform" not in stamp:
        raise EngineMismatch(f"{what} records no platform (a stamp from before tr0n-rt recorded it), so it may "
                             f"have been built for another OS or CPU than this {here_platform}: {how}")
    if stamp["platform"] != here_platform:
        raise EngineMismatch(f"{what} on {stamp['platform']}; this machine is {here_platform}, and TensorRT plans "
                             f"do not move between platforms: {how}")
    if stamp.get("hardware_compatible"):
        if sm_number(here_sm) < 80:
            raise EngineMismatch(f"{what} (hardware-compatible, Ampere or newer); this GPU ({gpu_name}) is "
                                 f"{here_sm}: {how}")
    elif built_sm != here_sm:
        raise EngineMismatch(f"{what}; this GPU ({gpu_name}) is {here_sm}: {how}")
    if runs_on_tensorrt(stamp["tensorrt"], trt_version, bool(stamp.get("version_compatible"))):
        return
    if stamp.get("version_compatible"):
        built3, nxt = ".".join(map(str, built_v[:3])), CROSS_MAJOR.get(built_v[0])
        also = f" and on any TensorRT {nxt}.x" if nxt else ""
        raise EngineMismatch(f"{what} (version-compatible: runs on TensorRT {built3} or a newer {built_v[0]}.x"
                             f"{also}); this is TensorRT {trt_version}: {how}")
    raise EngineMismatch(f"{what}; this is TensorRT {short_version(trt_version)} ({trt_version}): {how}")


def check_engine_source(bundle: Bundle, graph: str, stamp: dict) -> None:
    """BackendError if the engine was built from another version of the graph than the bundle's own."""
    source = stamp.get("source", {})
    files = bundle.manifest["graphs"][graph]["files"]
    current = graph_fingerprint(bundle.manifest, source.get("file", ""))
    if source.get("file") not in files.values() or current != source.get("sha256"):
        raise BackendError(f"the {graph} engine was built from a different {source.get('file', 'graph')} than the "
                           f"bundle now holds (re-exported since?); {REBUILD.format(bundle=bundle.folder)}")
