"""Hostile input on the command line (issue 17): outputs that are devices, links or the run's own files;
prompt files that are not text; numbers too large to finish; vague messages; Ctrl-C; and a kill in the
middle of writing a sample run's results."""
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tr0n_rt import cli
from tr0n_rt.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--steps", "0", "--copies", "1"]


def run_cli(argv) -> int:
    """main's exit status; argparse's usage exit counts as its code. A KeyboardInterrupt that escapes main
    fails the test (instead of ending the whole test session)."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:
        return e.code
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped tr0n_rt.cli.main")


@pytest.fixture
def no_loading(monkeypatch):
    """Any model loading or benchmark process fails the test: the checks must come first."""
    def refuse(*a, **k):
        raise AssertionError("a model was loaded (or a benchmark run) before the paths were checked")

    import tr0n_rt.backends
    import tr0n_rt.bench

    monkeypatch.setattr(tr0n_rt.backends, "open_backend", refuse)
    monkeypatch.setattr(tr0n_rt.bench, "run_config", refuse)


@pytest.fixture
def box(tmp_path):
    """A sandbox: a FIFO (a stand-in for /dev/null: what the run must never replace), links to it and
    to a file outside, and a user file."""
    (tmp_path / "outside").mkdir()
    keep = tmp_path / "outside" / "keep.txt"
    keep.write_text("keep")
    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "fifo", tmp_path / "link_to_fifo")
    os.symlink(keep, tmp_path / "link_to_file")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    return tmp_path


def untouched(box):
    assert stat.S_ISFIFO(os.lstat(box / "fifo").st_mode)
    for link in ("link_to_fifo", "link_to_file", "dangling"):
        assert os.path.islink(box / link)
    assert (box / "outside" / "keep.txt").read_text() == "keep"
    assert [p.name for p in (box / "outside").iterdir()] == ["keep.txt"]


def commands(pipeline, box):
    """command -> argv without --json, for each command that writes a JSON."""
    prompts = box / "prompts.txt"
    prompts.write_text("a red circle\n")
    return {"sample": ["sample", "a red circle", "--pipeline", pipeline, *FAST, "--out", box / "o"],
            "eval": ["eval", "--pipeline", pipeline, "--prompts", prompts, *FAST],
            "bench": ["bench", "--pipeline", pipeline, "--backends", "torch", "--batch", "1"]}


# --- 1. --json never replaces what is not a regular file, nor the run's own inputs and outputs ---------------
@pytest.mark.parametrize("command", ["sample", "eval", "bench"])
@pytest.mark.parametrize("target, message", [
    ("fifo", "is not a regular file (a FIFO)"),
    ("link_to_fifo", "is a symbolic link"),
    ("link_to_file", "is a symbolic link"),
    ("dangling", "is a symbolic link"),
])
def test_json_never_replaces_a_device_fifo_or_link(tiny_text_pipeline, box, no_loading, capsys, command, target,
                                                   message):
    argv = commands(tiny_text_pipeline, box)[command]
    assert run_cli(argv + ["--json", box / target]) == 2
    err = capsys.readouterr().err
    assert f"--json {box / target} " in err and message in err and "Traceback" not in err
    untouched(box)
    assert not (box / "o").exists() and not (box / "nowhere").exists()


def test_bench_png_never_replaces_a_fifo(tiny_text_pipeline, box, no_loading, capsys):
    argv = commands(tiny_text_pipeline, box)["bench"]
    assert run_cli(argv + ["--json", box / "b.json", "--png", box / "fifo"]) == 2
    assert "--png" in capsys.readouterr().err
    untouched(box)


def test_outputs_never_replace_a_users_other_file(tiny_text_pipeline, box, no_loading, capsys):
    """An existing --json must look like a result (a JSON object) and --png like a PNG; empty files may go."""
    from tr0n_rt.output_checks import check_output_files

    (box / "notes.txt").write_text("user data: {not json}")
    (box / "chart.png").write_text("not a picture")
    for command, argv in commands(tiny_text_pipeline, box).items():
        assert run_cli(argv + ["--json", box / "notes.txt"]) == 2, command
        assert "exists and is not a JSON file that tr0n-rt could have written" in capsys.readouterr().err
    assert run_cli(commands(tiny_text_pipeline, box)["bench"] + ["--json", box / "b.json", "--png", box / "chart.png"]) == 2
    assert f"--png {box / 'chart.png'} exists and is not a PNG file" in capsys.readouterr().err
    assert (box / "notes.txt").read_text() == "user data: {not json}" and (box / "chart.png").read_text() == "not a picture"
    (box / "old.json").write_text('  {"accuracy": 1.0}\n')
    (box / "empty.json").write_text("")
    (box / "old.png").write_bytes(b"\x89PNG\r\n\x1a\n...")
    check_output_files({"--json": box / "old.json", "--png": box / "old.png"})
    check_output_files({"--json": box / "empty.json"})


@pytest.fixture
def bundle(tiny_text_pipeline, tmp_path):
    """A folder the run reads that is a bundle (manifest.json) as well as a pipeline."""
    folder = tmp_path / "bundle"
    shutil.copytree(tiny_text_pipeline, folder)
    (folder / "manifest.json").write_text('{"graphs": {}}')
    return folder


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("argv, message", [
    (["sample", "x", "--out", "{o}", "--json", "{o}/000.png"], "would replace 000.png, which this run writes"),
    (["sample", "x", "--out", "{o}", "--json", "{o}/007.png"], "would replace 007.png"),
    (["sample", "x", "--out", "{o}", "--json", "{o}/grid.png"], "would replace grid.png"),
    (["sample", "x", "--out", "{o}", "--json", "{o}/strip.png"], "would replace strip.png"),
    (["sample", "x", "--out", "{o}", "--json", "{o}/../o/./001.png"], "would replace 001.png"),
    (["sample", "x", "--out", "{b}"], "--out {b} is inside {b}, the pipeline folder this run reads"),
    (["sample", "x", "--out", "{b}/sub"], "is inside {b}, the pipeline folder"),
    (["sample", "x", "--out", "{b}", "--json", "{b}/manifest.json"], "is inside {b}"),
    (["sample", "x", "--out", "{o}", "--json", "{b}/manifest.json"], "--json {b}/manifest.json is inside {b}"),
    (["sample", "x", "--out", "{o}", "--json", "{b}/pipeline.json"], "is inside {b}"),
    (["sample", "x", "--out", "{o}", "--json", "{b}/new.json"], "is inside {b}"),
    (["sample", "--image", "{o}/000.png", "--out", "{o}"], "--image {o}/000.png is a file of --out"),
    (["sample", "--image", "{o}", "--out", "{o}"], "is the --out folder"),
    (["sample", "--image", "{i}", "--out", "{o}", "--json", "{i}"], "--json {i} is --image {i}"),
    (["eval", "--prompts", "{p}", "--json", "{p}"], "--json {p} is the prompts file"),
    (["eval", "--json", "{b}/eval.json"], "is inside {b}"),
    (["eval", "--json", "{b}/prompts.txt"], "is inside {b}"),
    (["bench", "--backends", "torch", "--json", "{b}/manifest.json"], "is inside {b}"),
    (["bench", "--backends", "torch", "--json", "{o}/r.json", "--png", "{o}/r.json"], "--json and --png name the same"),
    (["bench", "--backends", "torch", "--json", "{o}/r.json", "--png", "{b}/chart.png"], "--png {b}/chart.png is inside"),
])
def test_outputs_are_never_the_runs_own_inputs_or_outputs(bundle, tmp_path, no_loading, capsys, argv, message):
    """--json that names an image or sheet the run writes, a file of the folder read, the prompts file or an
    --image; --out in the folder read: refused before anything is loaded, nothing touched."""
    names = {"o": tmp_path / "o", "b": bundle, "p": tmp_path / "prompts.txt", "i": tmp_path / "cond.png"}
    names["o"].mkdir()
    for f in ("000.png", "001.png", "007.png", "grid.png", "strip.png"):
        (names["o"] / f).write_bytes(b"earlier run " + f.encode())
    names["p"].write_text("a red circle\n")
    names["i"].write_bytes(b"not really a png")
    before = snapshot(tmp_path)
    rc = run_cli([a.format(**names) for a in argv] + ["--pipeline", bundle, *FAST])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message.format(**names) in err and "Traceback" not in err
    assert snapshot(tmp_path) == before
    assert not (bundle / "sub").exists()


def test_a_symlinked_output_folder_into_the_bundle_is_refused(bundle, tmp_path, no_loading, capsys):
    """Comparisons use symlink-resolved paths: a link to the bundle is the bundle."""
    os.symlink(bundle, tmp_path / "alias")
    assert run_cli(["sample", "x", "--pipeline", bundle, "--out", tmp_path / "alias"]) == 2
    assert "the pipeline folder this run reads" in capsys.readouterr().err
    os.symlink(tmp_path / "o", tmp_path / "o_alias")
    (tmp_path / "o").mkdir()
    assert run_cli(["sample", "x", "--pipeline", bundle, "--out", tmp_path / "o", "--json", tmp_path / "o_alias" / "000.png"]) == 2
    assert "would replace 000.png" in capsys.readouterr().err


# --- 2. eval's prompts file and bench's timeout ----------------------------------------------------------
@pytest.mark.parametrize("content, message", [
    (b"a red circle\n\xff\xfe broken\n", "is not UTF-8 text (byte 13, line 2)"),
    (b"", "holds no prompts"),
    (b"\n   \n\t\n", "holds no prompts"),
])
def test_eval_refuses_a_prompts_file_it_cannot_use_up_front(tiny_text_pipeline, tmp_path, no_loading, capsys, content,
                                                            message):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(content)
    rc = run_cli(["eval", "--pipeline", tiny_text_pipeline, "--prompts", prompts, "--json", tmp_path / "e.json", *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and f"prompt file {prompts} {message}" in err and "Traceback" not in err
    assert not (tmp_path / "e.json").exists()


def test_eval_reads_utf8_prompts_with_a_byte_order_mark(tmp_path):
    from tr0n_rt.cli import read_prompts

    path = tmp_path / "prompts.txt"
    path.write_bytes("\ufeffun cercle rouge\n\nétoile\n".encode())
    assert read_prompts(path) == ["un cercle rouge", "étoile"]
    assert read_prompts(path, limit=1) == ["un cercle rouge"]


@pytest.mark.parametrize("value", ["-1", "0", "-0.0", "nan", "inf", "-inf", "1e400", "1e9"])
def test_bench_timeout_must_be_positive_seconds(capsys, value):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["bench", f"--timeout={value}"])
    assert e.value.code == 2
    assert "argument --timeout: must be a number of seconds > 0 and <= 604800" in capsys.readouterr().err
    assert build_parser().parse_args(["bench", "--timeout", "0.5"]).timeout == 0.5


# --- 3. every count has an upper bound, stated in the message ---------------------------------------------
@pytest.mark.parametrize("command, option, low, high", [
    (["sample", "x"], "--steps", 0, 10_000),
    (["sample", "x"], "--copies", 0, 1024),
    (["sample", "x"], "--samples", 1, 100_000),
    (["sample", "x"], "--threads", 1, 1024),
    (["sample", "x"], "--batch", 1, 4096),
    (["sample", "x"], "--seed", 0, 2**64 - 1),
    (["sample", "x", "y"], "--interpolate", 2, 1000),
    (["eval"], "--steps", 0, 10_000),
    (["eval"], "--samples", 1, 100_000),
    (["eval"], "--batch", 1, 4096),
    (["bench"], "--batch", 1, 4096),
    (["bench"], "--steps", 0, 10_000),
    (["bench"], "--copies", 0, 1024),
    (["bench"], "--warmup", 0, 1000),
    (["bench"], "--repeats", 1, 1000),
    (["bench"], "--threads", 1, 1024),
    (["build"], "--batch", 1, 4096),
    (["build"], "--copies", 0, 1024),
    (["build"], "--components", 1, 1024),
    (["build"], "--opt-level", 0, 5),
    (["train"], "--epochs", 1, 100_000),
    (["train"], "--threads", 1, 1024),
])
def test_numbers_past_their_bound_are_refused_at_parse_time(capsys, command, option, low, high):
    dest = option.lstrip("-").replace("-", "_")
    for value in (low, high):
        parsed = getattr(build_parser().parse_args(command + [option, str(value)]), dest)
        assert parsed == value or parsed == [value]
    for value in (high + 1, high * 2**20 + 7, 2**70 + high, 10**100):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(command + [option, str(value)])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {option}: must be <= {high}" in err and f"(allowed: {low} to {high})" in err
        assert len(err) < 2000


def test_seed_plus_samples_must_stay_a_64_bit_seed(tiny_text_pipeline, tmp_path, no_loading, capsys):
    argv = ["sample", "x", "--pipeline", tiny_text_pipeline, "--out", tmp_path / "o", "--seed", 2**64 - 2]
    assert run_cli(argv + ["--samples", "3"]) == 2
    assert "give --seed <= 18446744073709551613" in capsys.readouterr().err


# --- 4. messages say what is actually wrong -------------------------------------------------------------
def test_pipeline_folder_problems_are_named(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    for name, message in [("missing", "does not exist"), ("file", "is a file, give a folder"),
                          ("dangling", "is a broken symbolic link"),
                          ("empty", "holds neither manifest.json (a bundle) nor pipeline.json (a pipeline)")]:
        for argv in (["sample", "x", "--out", tmp_path / "o"], ["eval"], ["bench", "--json", tmp_path / "b.json"]):
            assert run_cli(argv + ["--pipeline", tmp_path / name]) == 2
            err = capsys.readouterr().err
            assert f"--pipeline {tmp_path / name} {message}" in err, err
            assert "needs torch" not in err and "tr0n-rt train --world shapes" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "b.json").exists()


def test_cuda_without_torch_says_what_this_install_has(tiny_text_pipeline, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails: as if not installed
    assert run_cli(["sample", "x", "--pipeline", tiny_text_pipeline, "--device", "cuda", "--out", tmp_path / "o"]) == 2
    err = capsys.readouterr().err
    assert "device 'cuda' needs a CUDA build of onnxruntime-gpu (for a bundle) or torch (for a pipeline)" in err
    assert "and no torch" in err and "tr0n-rt export --pipeline" in err and "needs torch and" not in err


def test_cuda_with_a_cpu_build_of_torch_says_so(tiny_text_pipeline, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.version, "cuda", None)
    assert run_cli(["sample", "x", "--pipeline", tiny_text_pipeline, "--device", "cuda", "--out", tmp_path / "o"]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA build of onnxruntime-gpu (for a bundle) or torch" in err and "(a CPU build)" in err


def test_a_bundle_without_onnxruntime_says_to_install_it(bundle, tmp_path, monkeypatch, capsys):
    (bundle / "pipeline.json").unlink()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert run_cli(["sample", "x", "--pipeline", bundle, "--out", tmp_path / "o"]) == 2
    err = capsys.readouterr().err
    assert "is a bundle (manifest.json, no pipeline.json) and needs onnxruntime, which is not installed" in err
    assert run_cli(["sample", "x", "--pipeline", bundle, "--backend", "torch", "--out", tmp_path / "o"]) == 2
    assert "the torch backend runs pipeline folders; use --backend onnxruntime" in capsys.readouterr().err


# --- 5. Ctrl-C: one line, exit 130 ----------------------------------------------------------------------
def interrupt(*a, **k):
    raise KeyboardInterrupt


@pytest.mark.parametrize("command", ["sample", "eval", "bench"])
def test_ctrl_c_before_writing_says_nothing_was_written(tiny_text_pipeline, box, monkeypatch, capsys, command):
    import tr0n_rt.backends
    import tr0n_rt.bench

    monkeypatch.setattr(tr0n_rt.backends, "open_backend", interrupt)
    monkeypatch.setattr(tr0n_rt.bench, "run_config", interrupt)
    argv = commands(tiny_text_pipeline, box)[command] + ["--json", box / "r.json"]
    assert run_cli(argv) == 130
    assert capsys.readouterr().err == "tr0n-rt: interrupted; nothing was written\n"
    assert not (box / "r.json").exists() and not (box / "o").exists()


def test_ctrl_c_in_a_long_command_exits_130_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(cli, "build_time", interrupt)
    assert run_cli(["export", "--world", "shapes"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("tr0n-rt: interrupted; ") and err.count("\n") == 1 and "rerun" in err


def test_ctrl_c_while_results_are_renamed_into_place_is_held_until_they_are_complete(tiny_text_pipeline, tmp_path,
                                                                                       monkeypatch, capsys):
    out = tmp_path / "o"
    real_replace, calls = os.replace, []
    # Python's own Ctrl-C handler, whatever an earlier test or library installed (restored afterwards)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def replace_then_ctrl_c(src, dst, **k):
        if Path(dst).parent == out:  # a result renamed into place (not a cache file written on the way)
            calls.append(dst)
            if len(calls) == 1:
                signal.raise_signal(signal.SIGINT)
        return real_replace(src, dst, **k)

    monkeypatch.setattr(os, "replace", replace_then_ctrl_c)
    try:
        code = run_cli(["sample", "a red circle", "--pipeline", tiny_text_pipeline, *FAST, "--samples", "2",
                        "--no-judge", "--out", out])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130
    err = capsys.readouterr().err
    assert err == f"tr0n-rt: interrupted; the results were written completely before the interrupt: {out / 'samples.json'}\n"
    data = json.loads((out / "samples.json").read_text())
    assert all(Path(r["file"]).is_file() for r in data["images"]) and len(data["images"]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["000.png", "001.png", "grid.png", "samples.json"]


# --- 6. a kill at any moment while writing the results --------------------------------------------------
CHILD = r"""
import json, os, signal, sys
from pathlib import Path
from tr0n_rt.outputs import write_results

kill_at, job = int(sys.argv[1]), json.loads(sys.argv[2])
calls = [0]

def counted(f):
    def wrapper(*a, **k):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return f(*a, **k)
    return wrapper

for name in ("replace", "rename", "unlink", "remove", "rmdir", "mkdir"):
    setattr(os, name, counted(getattr(os, name)))
write_results(Path(job["out"]), Path(job["json"]), {k: v.encode() for k, v in job["files"].items()}, job["summary"])
"""


def results(run: str, out: Path, count: int, sheet: str):
    """A run's files (each PNG's bytes name the run) and its summary, as cmd_sample records them."""
    names = [f"{n:03d}.png" for n in range(count)]
    files = {n: f"{run}:{n}" for n in names + [sheet]}
    summary = {"run": run, sheet.removesuffix(".png"): str(out / sheet), "images": [{"file": str(out / n)} for n in names]}
    return files, summary


def write(run, out, json_path, count, sheet):
    from tr0n_rt.outputs import write_results

    files, summary = results(run, out, count, sheet)
    write_results(out, json_path, {k: v.encode() for k, v in files.items()}, summary)
    return files


def assert_consistent(out: Path, jsons):
    """Every samples JSON that describes OUT is whole, and lists only images that exist and were written by
    the run that wrote the JSON."""
    for j in jsons:
        if not j.exists():
            continue
        data = json.loads(j.read_text())  # never half a JSON
        if data.get("out") != os.path.realpath(out):
            continue
        listed = [Path(r["file"]).name for r in data["images"]]
        listed += [Path(data[k]).name for k in ("grid", "strip") if k in data]
        for name in listed:
            assert (out / name).is_file(), f"{j.name} of run {data['run']} lists {name}, which is missing"
            assert (out / name).read_text() == f"{data['run']}:{name}", f"{j.name} of run {data['run']} lists {name}, " \
                                                                         f"written by another run"


def staging_entries(*folders):
    return [p.name for f in folders if f.exists() for p in f.iterdir() if "tr0n-rt" in p.name or p.name.endswith(".part")]


@pytest.mark.parametrize("b_json, c_json", [("default", "default"), ("other", "other"), ("default", "other")])
def test_a_kill_at_any_step_leaves_no_json_describing_images_it_did_not_write(tmp_path, b_json, c_json):
    """Run A writes 5 images, run B (3 images and a strip) is killed (SIGKILL) before its N-th rename,
    removal or mkdir, for every N until it finishes; then run C (1 image) runs. After the kill, every JSON
    describes only images of its own run; after C, no staging entry and no image of A or B is left."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    n, finished = 0, False
    while not finished:
        n += 1
        assert n < 100, "run B never finished"
        root = tmp_path / f"kill{n}"
        out, other = root / "out", root / "other"
        other.mkdir(parents=True)
        jsons = {"default": out / "samples.json", "other": other / "run.json"}
        write("A", out, jsons["default"], 5, "grid.png")
        (out / "notes.txt").write_text("mine")
        files, summary = results("B", out, 3, "strip.png")
        job = {"out": str(out), "json": str(jsons[b_json]), "files": files, "summary": summary}
        done = subprocess.run([sys.executable, "-c", CHILD, str(n), json.dumps(job)], env=env, capture_output=True,
                              text=True, timeout=60, check=False)
        finished = done.returncode == 0
        assert finished or done.returncode == -signal.SIGKILL, done.stderr
        assert_consistent(out, jsons.values())
        c_files = write("C", out, jsons[c_json], 1, "grid.png")
        assert_consistent(out, jsons.values())
        assert staging_entries(out, other) == [], f"kill before step {n}"
        expected = set(c_files) | {"notes.txt"} | ({"samples.json"} if c_json == "default" else set())
        assert {p.name for p in out.iterdir()} == expected, f"kill before step {n}"
    assert n > 8  # the kills did land between the renames


@pytest.mark.parametrize("fail", ["replace", "unlink"])
def test_a_failing_rename_or_removal_at_any_step_keeps_the_json_consistent(tmp_path, monkeypatch, fail):
    """The same, in process: os.replace (or os.unlink) fails at its N-th call; the run ends in a Tr0nError
    and the next run cleans up after it."""
    from tr0n_rt.errors import Tr0nError

    original = getattr(os, fail)
    n, finished = 0, False
    while not finished:
        n += 1
        root = tmp_path / f"fail{n}"
        out = root / "out"
        json_path = out / "samples.json"
        write("A", out, json_path, 5, "grid.png")
        def failing(*a, calls=[], n=n, **k):  # noqa: B006 - the calls of this round
            calls.append(a)
            if len(calls) == n:
                raise OSError(28, "No space left on device", str(a[0]))
            return original(*a, **k)

        monkeypatch.setattr(os, fail, failing)
        try:
            write("B", out, json_path, 3, "strip.png")
            finished = True
        except Tr0nError:
            pass
        finally:
            monkeypatch.setattr(os, fail, original)
        assert_consistent(out, [json_path])
        c_files = write("C", out, json_path, 1, "grid.png")
        assert staging_entries(out) == []
        assert {p.name for p in out.iterdir()} == set(c_files) | {"samples.json"}


def test_a_ctrl_c_landing_as_the_hold_starts_leaves_python_s_handler_in_place(monkeypatch):
    """sigint_held installs its handler inside its try: a Ctrl-C arriving right after the install (here: raised
    by the install itself, once it is done) still restores the handler that was there, so later Ctrl-Cs of
    the process are not swallowed by a stale one."""
    from tr0n_rt.outputs import sigint_held

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    real_signal, calls = signal.signal, []

    def install_then_interrupt(signum, handler):
        old = real_signal(signum, handler)
        calls.append(handler)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return old

    monkeypatch.setattr(signal, "signal", install_then_interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            with sigint_held("note"):
                pass
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        real_signal(signal.SIGINT, previous)
