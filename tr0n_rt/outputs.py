"""What `tr0n-rt sample` writes: a folder of numbered PNGs and a sheet, described by one JSON, checked
before any work and replaced together (staged, then renamed into place, the JSON last)."""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from .errors import Tr0nError

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


