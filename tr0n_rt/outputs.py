"""Where the commands write, checked before any work, and what `tr0n-rt sample` writes: a folder of
numbered PNGs and a sheet, described by one JSON, replaced so that a kill at any moment leaves no JSON
that describes images it did not write.

Checks (before any model is loaded): an output file (--json, --png) is absent, empty, or a regular file
that looks like a result tr0n-rt writes (a JSON object, a PNG; never a symbolic link, a folder, a
device, a FIFO or a socket, nor a user's other file), its folder is writable, and it is none of the
run's inputs (the pipeline or bundle folder read, the prompts file, --image files) nor one of the files
the run itself writes (OUT's numbered PNGs, grid.png, strip.png, its staging entries). --out is a
folder outside the pipeline folder read. Paths are compared absolute and symlink-resolved.

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

from .errors import ConfigError, Tr0nError

RUN_FILE = re.compile(r"\d{3,}\.png|grid\.png|strip\.png", re.IGNORECASE)  # what a sample run writes in OUT
STAGE_PREFIX = ".tr0n-rt-sample."
STAGE_DIR = re.compile(r"\.tr0n-rt-sample\.(\d+)\.([0-9a-f]+)")  # OUT/.tr0n-rt-sample.PID.TOKEN
STAGED_JSON = re.compile(r"\..+\.tr0n-rt-sample\.(\d+)\.([0-9a-f]+)\.part")  # .NAME.tr0n-rt-sample.PID.TOKEN.part
PLAN = "plan.json"
_ACTIVE: set[str] = set()  # tokens of this process's write_results calls under way


class Interrupted(KeyboardInterrupt):
    """Ctrl-C that arrived once something was written; str() says what was kept."""


# --- checks --------------------------------------------------------------------------------------------
def real(path) -> Path:
    """Absolute, with every symbolic link resolved (as far as the path exists)."""
    return Path(os.path.realpath(path))


def within(path: Path, folder: Path) -> bool:
    """path is folder or inside it (both real)."""
    return path == folder or folder in path.parents


def kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "folder"), (stat.S_ISLNK, "symbolic link")):
        if test(mode):
            return name
    return "special file"


def check_target_file(path: Path, option: str, png: bool = False, inputs=None, pipeline: Path | None = None) -> None:
    """ConfigError unless `path` can be replaced by a rename without harm: it is absent, empty or a regular
    file that looks like what the option writes (png: a PNG, else a JSON object), never a symbolic link
    (the rename would replace the link, and its target would keep the old contents); it is not in the
    pipeline folder read nor one of `inputs` (see check_not_read); and its folder is writable or can be
    created."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except OSError as e:
        raise ConfigError(f"{option} {path}: cannot inspect it ({e.strerror}); choose another {option}") from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise ConfigError(f"{option} {path} is a symbolic link (to {os.readlink(path)}): tr0n-rt replaces files by "
                              f"renaming, which would replace the link, not its target; give the target's path or "
                              "another file name")
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{option} {path} is a folder: give a file name")
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{option} {path} is not a regular file (a {kind_of(st.st_mode)}): tr0n-rt only "
                              "replaces regular files; give another file name")
    check_not_read(path, option, pipeline, inputs or {})
    if st is not None and st.st_size and not looks_like(path, png):
        raise ConfigError(f"{option} {path} exists and is not a {'PNG' if png else 'JSON'} file that tr0n-rt could "
                          f"have written: it replaces only its own results; remove the file first or choose another "
                          f"{option}")
    check_writable_folder(path.parent, option)


def looks_like(path: Path, png: bool) -> bool:
    """Whether an existing file looks like one of tr0n-rt's results: a PNG by its signature, else a JSON
    object (first and last non-blank bytes { and }); only its first and last bytes are read."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            f.seek(max(0, os.fstat(f.fileno()).st_size - 64))
            tail = f.read(64)
    except OSError:
        return False
    if png:
        return head.startswith(b"\x89PNG\r\n\x1a\n")
    return head.lstrip()[:1] == b"{" and tail.rstrip()[-1:] == b"}"


def check_writable_folder(folder: Path, option: str) -> None:
    existing = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write into {folder}: {existing} is not a writable folder; choose another {option}")


def check_not_read(path: Path, option: str, pipeline: Path | None, inputs: dict[str, Path]) -> None:
    """An output path is not in the pipeline folder read, nor one of the input files (label -> path)."""
    target = real(path)
    if pipeline is not None and within(target, real(pipeline)):
        raise ConfigError(f"{option} {path} is inside {pipeline}, the pipeline folder this run reads (a bundle "
                          "holds only the files its manifest lists); write it elsewhere")
    for label, source in inputs.items():
        if source is not None and target == real(source):
            raise ConfigError(f"{option} {path} is {label}, which this run reads: give another file name")


def check_output_files(outputs: dict[str, Path | None], pipeline: Path | None = None,
                       inputs: dict[str, Path | None] | None = None) -> None:
    """eval and bench: every output file (option -> path; None: not written) checked before the run: see
    check_target_file and check_not_read; two options naming the same file are refused too."""
    seen: dict[Path, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        check_target_file(path, option, png=option == "--png", inputs=inputs, pipeline=pipeline)
        if real(path) in seen:
            raise ConfigError(f"{seen[real(path)]} and {option} name the same file {path}: give two file names")
        seen[real(path)] = option


def check_outputs(out_dir: Path, json_path: Path | None = None, pipeline: Path | None = None,
                  images: list[Path] | tuple = ()) -> None:
    """`tr0n-rt sample`: ConfigError unless out_dir is a folder (or can be created as one) outside the
    pipeline folder read, and json_path (default OUT/samples.json) is a file that may be replaced and is
    none of the files the run writes into OUT or reads (--image). Creates nothing: a run refused later
    leaves no empty folder behind."""
    if os.path.lexists(out_dir) and not out_dir.is_dir():
        what = "a broken symbolic link" if out_dir.is_symlink() and not out_dir.exists() else "a file"
        raise ConfigError(f"--out {out_dir} is {what}: give a folder (it is created if missing)")
    out = real(out_dir)
    if pipeline is not None and within(out, real(pipeline)):
        raise ConfigError(f"--out {out_dir} is inside {pipeline}, the pipeline folder this run reads: the PNGs "
                          "would appear there unlisted by its manifest; give another --out")
    check_writable_folder(out_dir, "--out")
    for image in images:
        source = real(image)
        if source == out or (source.parent == out and RUN_FILE.fullmatch(source.name)):
            raise ConfigError(f"--image {image} is {'the --out folder' if source == out else 'a file of --out'} "
                              f"{out_dir}, whose numbered PNGs this run replaces: give another --out")
    if json_path is None:
        return
    target = real(json_path)
    if target.parent == out and (RUN_FILE.fullmatch(target.name) or target.name.startswith(STAGE_PREFIX)):
        raise ConfigError(f"--json {json_path} would replace {target.name}, which this run writes into --out "
                          f"{out_dir}: give another file name (default: OUT/samples.json)")
    check_target_file(json_path, "--json", inputs={f"--image {p}": p for p in images}, pipeline=pipeline)


# --- a sample run's results ----------------------------------------------------------------------------
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
    got, old = [], None
    if threading.current_thread() is threading.main_thread():
        try:
            old = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
        except (ValueError, OSError):  # no signal handling here (an embedded interpreter)
            old = None
    if old is None:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
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
            plan = read_json_file(Path(entry.path) / PLAN)
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


def read_json_file(path: Path):
    """The JSON of a regular file (never a FIFO, device or link: reading one could block), else None."""
    if not is_regular(path):
        return None
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def describes(json_path: Path, out: Path) -> bool:
    """Whether json_path is a samples JSON of this tr0n-rt that records OUT (real) as its "out"."""
    data = read_json_file(json_path)
    return isinstance(data, dict) and data.get("out") == str(out) and isinstance(data.get("images"), list)


def listed_images(json_path: Path, out_dir: Path) -> set[str]:
    """Names of the numbered PNGs (000.png, ...) and the sheet (grid.png or strip.png) that an earlier
    samples JSON at json_path lists for this very folder: it must record out_dir (absolute) as its "out".
    A JSON of another folder, of an older version (no "out"), or unreadable lists nothing."""
    out = real(out_dir)
    if not describes(json_path, out):
        return set()
    data = read_json_file(json_path)
    names = {Path(r["file"]).name for r in data["images"] if isinstance(r, dict) and isinstance(r.get("file"), str)}
    names |= {Path(data[k]).name for k in ("grid", "strip") if isinstance(data.get(k), str)}
    return {n for n in names if RUN_FILE.fullmatch(n)}
