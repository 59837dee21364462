"""The onnxruntime backend's optimised-graph cache: where entries live, what keys them, how one is written
(staged, then moved into place, with its sha256 beside it) and when one is trusted.

An entry is `{graph}.{key}.onnx` in the cache folder ($TR0N_RT_CACHE/ort or ~/.cache/tr0n-rt/ort),
plus `.onnx.data` (the weights of a large graph) and `.onnx.sha256` (the digest of both). The key
covers the bundle graph's files, the onnxruntime version, the providers and this CPU, so an entry is
never served to another graph, build or machine; an entry whose files no longer match their digest is
deleted and rebuilt. Sessions themselves are the backend's: this module is handed functions that
make them.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import tempfile
from pathlib import Path

from ..atomic import atomic_path
from ..bundle import sha256_file
from ..errors import BackendError, BundleError

# Optimised graphs of bigger graphs (bytes of graph + weights files) are cached as graph + weights file:
# constant folding (transposed weights) can take them past protobuf's 2 GB.
CACHE_INLINE_BYTES = 256 << 20


def cache_root(cache_dir=None) -> Path:
    """cache_dir, else $TR0N_RT_CACHE/ort, else ~/.cache/tr0n-rt/ort."""
    if cache_dir is not None:
        return Path(cache_dir)
    root = os.environ.get("TR0N_RT_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "tr0n-rt") / "ort"


@functools.cache
def host_cpu() -> str:
    """This machine's architecture and CPU feature flags (Linux), for cache keys."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()} {flags.strip()}"


def entry_key(file_sha256s: list[str], ort_version: str, providers: list[str]) -> str:
    """24 hex digits over the graph's files (graph and weights files: another export's weights can come
    with the very same graph file), the onnxruntime version, the providers and the host CPU (graphs
    optimised with ORT_ENABLE_ALL may use layouts tuned to this CPU's vector width, NCHWc)."""
    parts = [*file_sha256s, ort_version, ",".join(providers), host_cpu()]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def cache_files(cache_file: Path) -> list[Path]:
    """An optimised-graph cache entry's files: the graph, its weights file (large graphs), its digest."""
    return [cache_file, cache_file.with_name(f"{cache_file.name}.data"),
            cache_file.with_name(f"{cache_file.name}.sha256")]


def record_digest(cache_file: Path) -> None:
    """Writes the sha256 of a new cache entry's graph (and weights file) beside it: cached_source
    refuses an entry that no longer matches, so a cache file altered or swapped is rebuilt, not run."""
    graph, data, digest = cache_files(cache_file)
    lines = [sha256_file(graph)] + ([sha256_file(data)] if data.is_file() else [])
    with atomic_path(digest) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def cached_source(cache_file: Path) -> Path | bytes:
    """What ONNX Runtime reads for a cache entry, checked against its recorded digest: the graph's bytes
    as hashed (inline weights), or its path after graph and weights file are hashed. BundleError when
    the digest is missing or differs (the caller rebuilds the entry)."""
    graph, data, digest = cache_files(cache_file)
    recorded = digest.read_text().split() if digest.is_file() else []
    if data.is_file():
        source, actual = graph, [sha256_file(graph), sha256_file(data)]
    else:
        source = graph.read_bytes()
        actual = [hashlib.sha256(source).hexdigest()]
    if recorded != actual:
        raise BundleError(f"cached optimised graph {graph} does not match its recorded sha256")
    return source


class GraphCache:
    """One cache folder. open() serves an entry, store() writes one; both take the backend's session maker."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def entry(self, graph: str, key: str) -> Path:
        return self.folder / f"{graph}.{key}.onnx"

    def tensorrt_folder(self, graph: str | None, key: str | None) -> Path:
        """Where onnxruntime's TensorRT provider keeps its engines for a graph (made if missing)."""
        folder = self.folder / "tensorrt" / (f"{graph}.{key}" if graph else "shared")
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def open(self, cache_file: Path, session_from):
        """session_from(source) on a trusted entry (its checked bytes or path), or None when there is
        none; an entry that is unreadable, altered, or refused by session_from (not this graph's IO:
        BackendError, BundleError) is deleted, for the caller to rebuild."""
        if not cache_file.is_file():
            return None
        try:
            return session_from(cached_source(cache_file))
        except (BackendError, BundleError, OSError):
            for f in cache_files(cache_file):
                f.unlink(missing_ok=True)
            return None

    def store(self, cache_file: Path, graph_bytes: int, optimise):
        """(session, cache_file), or (session, None) when the optimised graph could not be cached (no
        writable folder, past protobuf's 2 GB, no digest written). optimise(save_to, weights_file)
        makes the optimised session, saving the optimised graph to save_to (None: not saved) with its
        weights in the file named weights_file beside it (None: inline). graph_bytes: the bundle
        graph's files, which choose inline or weights file (CACHE_INLINE_BYTES)."""
        try:
            if graph_bytes > CACHE_INLINE_BYTES:
                session = self._store_with_weights_file(cache_file, optimise)
            else:
                with atomic_path(cache_file) as tmp:  # optimise into a temp name, then os.replace
                    session = optimise(tmp, None)
        except OSError:  # no writable cache folder: run uncached
            return optimise(None, None), None
        except BackendError as e:
            # ORT cannot save an inline optimised graph past protobuf's 2 GB (a graph under
            # CACHE_INLINE_BYTES that constant folding grows that far): run it uncached rather than not at all
            if "Protobuf serialization failed" not in str(e):
                raise
            return optimise(None, None), None
        try:
            record_digest(cache_file)
        except OSError:  # the entry stays without a digest: the next open rebuilds it
            return session, None
        return session, cache_file

    def _store_with_weights_file(self, cache_file: Path, optimise):
        """The optimised graph into cache_file plus its weights in `{cache_file.name}.data`, both written
        under their final names in a private folder, then moved into place, weights first."""
        data = cache_file.with_name(f"{cache_file.name}.data")
        self.folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{cache_file.name}.", dir=self.folder) as stage:
            staged = Path(stage) / cache_file.name
            session = optimise(staged, data.name)
            if staged.with_name(data.name).exists():  # absent when every weight is under ORT's 1 KB minimum
                os.replace(staged.with_name(data.name), data)
            os.replace(staged, cache_file)
        return session
