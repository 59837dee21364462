"""Atomic file writes: a reader sees the old file or the complete new one, never half of one."""
from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temporary path beside `path`; renames it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make shipped files owner-only
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj) -> None:
    """Standard JSON: NaN and infinities (an energy with T = 0, an accuracy over no images) become null,
    which every JSON parser reads (Python's json would write bare NaN, which JavaScript's JSON.parse refuses)."""
    write_bytes(path, json_bytes(obj))


def json_bytes(obj) -> bytes:
    """obj as indented standard JSON (see write_json), UTF-8."""
    return (json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False) + "\n").encode()


def json_safe(obj):
    """obj with every non-finite float replaced by None (dicts, lists and tuples walked)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
