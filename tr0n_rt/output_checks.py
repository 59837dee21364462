"""Where the commands write, checked before any work (no model is loaded until these pass).

An output file (--json, --png) is absent, empty, or a regular file that looks like a result tr0n-rt
writes (a JSON object, a PNG; never a symbolic link, a folder, a device, a FIFO or a socket, nor a
user's other file), its folder is writable, and it is none of the run's inputs (the pipeline or bundle
folder read, the prompts file, --image files) nor one of the files the run itself writes (OUT's
numbered PNGs, grid.png, strip.png, its staging entries). --out is a folder outside the pipeline folder
read. Paths are compared absolute and symlink-resolved. How the results are then written: outputs.py.
"""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from .errors import ConfigError

RUN_FILE = re.compile(r"\d{3,}\.png|grid\.png|strip\.png", re.IGNORECASE)  # what a sample run writes in OUT
STAGE_PREFIX = ".tr0n-rt-sample."  # the staging entries of a sample run (outputs.py)


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
