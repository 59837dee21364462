"""Atomic file writes: a reader sees the old file or the complete new one, never half of one."""
from __future__ import annotations

import json
import math
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import ConfigError


def check_replaceable(path: Path) -> None:
    """ConfigError when `path` exists and is neither a regular file nor a symbolic link: a rename onto a
    device, a FIFO or a socket would replace it (as root even /dev/null) with a regular file."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        what = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a device, FIFO or socket)"
        raise ConfigError(f"{path} is {what}: tr0n-rt only replaces regular files; give another file name")


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temporary path beside `path`; renames it onto `path` only if the block succeeds. `path`
    must be absent, a regular file or a symbolic link (which is replaced, not followed)."""
    path = Path(path)
    check_replaceable(path)
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
