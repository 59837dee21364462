"""What `tr0n-rt sample` writes: a folder of numbered PNGs and a sheet, described by one JSON, replaced so
that a kill at any moment leaves no JSON that describes images it did not write. Where every command may
write is checked before any work by output_checks.py.

write_results, step by step:
  1. stage (nothing in place is touched): OUT/.tr0n-rt-sample.PID.TOKEN/ receives plan.json (the names
     the run may touch, its predecessors' included, and the JSON files that describe OUT), then every
     PNG; the new JSON goes beside --json as .NAME.tr0n-rt-sample.PID.TOKEN.part. All fsynced.
  2. commit, one removal or rename at a time: the staging entries of runs no longer running (their
     plans are carried in this one); every samples JSON known to describe OUT (--json,
     OUT/samples.json, those a killed run recorded); the PNGs and sheet that an earlier run wrote and
     this run does not; then the PNGs are renamed into OUT; then the new JSON onto --json; then the
     staging folder goes. Ctrl-C during the commit is held until the commit ends.
So the JSON on disk is the previous run's with all its images untouched (a kill in step 1 or before
the first removal), or absent (a kill within the commit: OUT then holds a mix of the two runs' images
that no JSON describes), or the new run's with all its images in place. A kill leaves staging entries;
the next `tr0n-rt sample` into the same OUT removes them, and also every numbered PNG and sheet that
the killed run or its predecessor had written into OUT and the new run does not write.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import stat
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import Tr0nError
from .jsonfile import read_json_file
from .output_checks import RUN_FILE, STAGE_PREFIX, real

STAGE_DIR = re.compile(r"\.tr0n-rt-sample\.(\d+)\.([0-9a-f]+)")  # OUT/.tr0n-rt-sample.PID.TOKEN
STAGED_JSON = re.compile(r"\..+\.tr0n-rt-sample\.(\d+)\.([0-9a-f]+)\.part")  # .NAME.tr0n-rt-sample.PID.TOKEN.part
PLAN = "plan.json"
_ACTIVE: set[str] = set()  # tokens of this process's write_results calls under way


class Interrupted(KeyboardInterrupt):
    """Ctrl-C that arrived once something was written; str() says what was kept."""


def write_results(out_dir: Path, json_path: Path, files: dict[str, bytes], summary: dict) -> None:
    """Writes `files` (name -> bytes) into out_dir, then the summary JSON at json_path, as the module
    docstring describes. The summary records out_dir as an absolute path ("out"). A failure before the
    commit (a full disk) leaves the previous run's files as they were."""
    out = real(out_dir)
    json_path = Path(json_path)
    summary = {**summary, "out": str(out)}
    token = secrets.token_hex(6)
    stage = out / f"{STAGE_PREFIX}{os.getpid()}.{token}"
    staged_json = json_path.parent / f".{json_path.name}.tr0n-rt-sample.{os.getpid()}.{token}.part"
    _ACTIVE.add(token)
    committing = False
    try:
        try:
            out.mkdir(parents=True, exist_ok=True)
            json_path.parent.mkdir(parents=True, exist_ok=True)
            dead = dead_stages(out)
            plans = [plan for _, plan in dead if plan is not None]
            previous = listed_images(json_path, out) | listed_images(out / "samples.json", out)
            previous |= {n for plan in plans for n in plan.get("names", []) if isinstance(n, str)}
            describing = [json_path, out / "samples.json"]
            describing += [Path(p) for plan in plans for p in plan.get("jsons", []) if isinstance(p, str)]
            names = sorted(n for n in previous | set(files) if RUN_FILE.fullmatch(n) and "/" not in n)
            stage.mkdir()
            write_synced(stage / PLAN, json.dumps({"out": str(out), "names": names,
                                                   "jsons": sorted({str(real(p)) for p in describing}),
                                                   "staged_json": str(real(staged_json))}).encode())
            for name, data in files.items():
                write_synced(stage / name, data)
            from .atomic import json_bytes

            write_synced(staged_json, json_bytes(summary))
        except OSError as e:
            raise Tr0nError(f"cannot write the results ({e.strerror}: {e.filename}): free space or choose another "
                            "--out / --json; the previous results are as they were") from None
        committing = True
        with sigint_held(f"the results were written completely before the interrupt: {json_path}"):
            try:
                commit(out, json_path, staged_json, stage, files, previous, describing, dead)
            except OSError as e:
                raise Tr0nError(f"replacing the results in {out_dir} failed ({e.strerror}: {e.filename}); no samples "
                                f"JSON describes {out_dir} now: rerun the command (it removes what this run left)") from None
    except BaseException:
        if not committing:  # nothing in place was touched: leave no trace (what cannot go, the next run removes)
            try:
                remove_stage(stage, None)
                _unlink(staged_json)
            except OSError:
                pass
        raise
    finally:
        _ACTIVE.discard(token)


def commit(out: Path, json_path: Path, staged_json: Path, stage: Path, files: dict[str, bytes], previous: set[str],
           describing: list[Path], dead: list[tuple[Path, dict | None]]) -> None:
    for folder, plan in dead:  # this run's plan (fsynced) now carries what they would have touched
        try:
            remove_stage(folder, plan)
        except OSError:  # not ours to force (a folder inside it): left as it is
            pass
    remove_dead_parts(json_path)
    removed = set()
    for path in describing:  # no JSON may describe a mix of two runs' images
        if real(path) not in removed and describes(path, out):
            removed.add(real(path))
            os.unlink(path)
    for name in sorted(previous - set(files)):
        if RUN_FILE.fullmatch(name) and "/" not in name and is_regular(out / name):
            os.unlink(out / name)
    for name in files:
        os.replace(stage / name, out / name)
    sync_folder(out)
    os.replace(staged_json, json_path)
    sync_folder(json_path.parent)
    try:  # done: what cannot go now, the next run removes
        remove_stage(stage, None)
    except OSError:
        pass


@contextmanager
def sigint_held(note: str):
    """Holds Ctrl-C (SIGINT) until the block ends, then raises Interrupted(note); only in the main thread."""
    got = []
    # The handler in place, read without changing anything: None when it was not installed from Python
    old = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if old is None:
        yield
        return
    # Installed inside the try: a Ctrl-C that lands right after the install still restores `old`
    # (installed before the try, such a Ctrl-C left this block's handler in place for good, and every
    # later Ctrl-C of the process was swallowed by it)
    try:
        try:
            signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
        except (ValueError, OSError):  # no signal handling here (an embedded interpreter)
            pass
        yield
    finally:
        try:
            signal.signal(signal.SIGINT, old)
        except (ValueError, OSError):
            pass
    if got:
        if old is signal.default_int_handler:
            raise Interrupted(note)
        if callable(old):
            old(signal.SIGINT, None)
        elif old == signal.SIG_DFL:
            signal.raise_signal(signal.SIGINT)


def write_synced(path: Path, data: bytes) -> None:
    """A new file (never an existing one), written and flushed to the disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_folder(folder: Path) -> None:
    """Flushes a folder's entries (renames) to the disk, where the system allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def alive(pid: int, token: str, folder: Path) -> bool:
    """Whether the run that made a staging entry may still be writing it."""
    if pid == os.getpid():
        return token in _ACTIVE
    if os.name != "posix":  # no harmless liveness probe: an entry a day old is a dead run's
        try:
            return time.time() - os.lstat(folder).st_mtime < 86400
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's running process
        return True
    return True


def dead_stages(out: Path) -> list[tuple[Path, dict | None]]:
    """OUT's staging folders left by runs no longer running, each with its plan (None: unreadable)."""
    found = []
    for entry in os.scandir(out):
        m = STAGE_DIR.fullmatch(entry.name)
        if m and entry.is_dir(follow_symlinks=False) and not alive(int(m[1]), m[2], Path(entry.path)):
            plan = previous_json(Path(entry.path) / PLAN)
            plan = plan if isinstance(plan, dict) and plan.get("out") == str(out) else None
            found.append((Path(entry.path), plan))
    return found


def remove_stage(folder: Path, plan: dict | None) -> None:
    """Removes a staging folder (flat: the plan and staged PNGs) and the staged JSON its plan names."""
    if plan is not None and isinstance(plan.get("staged_json"), str):
        staged, m = Path(plan["staged_json"]), STAGE_DIR.fullmatch(folder.name)
        if m and staged.name.endswith(f".tr0n-rt-sample.{m[1]}.{m[2]}.part"):  # this run's own, nothing else
            _unlink(staged)
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for entry in sorted(entries, key=lambda e: e.name != PLAN):  # the plan last
        if entry.is_file(follow_symlinks=False) or entry.is_symlink():
            _unlink(Path(entry.path))
    try:
        os.rmdir(folder)
    except FileNotFoundError:
        pass


def remove_dead_parts(json_path: Path) -> None:
    """Staged JSONs beside json_path left by runs no longer running."""
    prefix = f".{json_path.name}.tr0n-rt-sample."
    for entry in os.scandir(json_path.parent):
        m = STAGED_JSON.fullmatch(entry.name)
        if m and entry.name.startswith(prefix) and not alive(int(m[1]), m[2], Path(entry.path)):
            _unlink(Path(entry.path))


def previous_json(path: Path):
    """The JSON of an earlier run's file, else None: a regular file only (never a FIFO, device or link:
    reading one could block), read by jsonfile.read_json_file (size, nesting and parse bounded)."""
    if not is_regular(path):
        return None
    try:
        return read_json_file(path, 16 << 20, Tr0nError, "")
    except Tr0nError:
        return None


def describes(json_path: Path, out: Path) -> bool:
    """Whether json_path is a samples JSON of this tr0n-rt that records OUT (real) as its "out"."""
    data = previous_json(json_path)
    return isinstance(data, dict) and data.get("out") == str(out) and isinstance(data.get("images"), list)


def listed_images(json_path: Path, out_dir: Path) -> set[str]:
    """Names of the numbered PNGs (000.png, ...) and the sheet (grid.png or strip.png) that an earlier
    samples JSON at json_path lists for this very folder: it must record out_dir (absolute) as its "out".
    A JSON of another folder, of an older version (no "out"), or unreadable lists nothing."""
    out = real(out_dir)
    if not describes(json_path, out):
        return set()
    data = previous_json(json_path)
    names = {Path(r["file"]).name for r in data["images"] if isinstance(r, dict) and isinstance(r.get("file"), str)}
    names |= {Path(data[k]).name for k in ("grid", "strip") if isinstance(data.get(k), str)}
    return {n for n in names if RUN_FILE.fullmatch(n)}
