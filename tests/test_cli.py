"""The command line: outputs, JSON records, and clear errors that leave no partial files."""
import json

import pytest

from tr0n_rt.cli import main


def test_sample_writes_pngs_grid_and_json(tiny_text_pipeline, tmp_path):
    out = tmp_path / "out"
    rc = main(["sample", "a red circle", "a blue square", "--pipeline", str(tiny_text_pipeline),
               "--samples", "2", "--steps", "2", "--copies", "2", "--seed", "7", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "samples.json").read_text())
    assert [r["prompt"] for r in data["images"]] == ["a red circle"] * 2 + ["a blue square"] * 2
    assert [r["seed"] for r in data["images"]] == [7, 8, 7, 8]
    assert all((out / f"{i:03d}.png").is_file() for i in range(4)) and (out / "grid.png").is_file()
    rec = data["images"][0]
    assert rec["settings"]["steps"] == 2 and set(rec["seconds_per_image"]) >= {"langevin", "decode"}


def test_class_world_sample(tiny_class_pipeline, tmp_path):
    rc = main(["sample", "3", "digit 1", "--pipeline", str(tiny_class_pipeline), "--steps", "1", "--copies", "1",
               "--out", str(tmp_path / "o"), "--json", str(tmp_path / "r.json")])
    assert rc == 0
    assert [r["class"] for r in json.loads((tmp_path / "r.json").read_text())["images"]] == ["3", "digit 1"]


@pytest.mark.parametrize("argv,message", [
    (["sample", "  "], "empty"),
    (["sample", "!!!"], "has no words"),
    (["sample", "x", "--preset", "fast", "--mode", "mixture", "--steps", "-1"], "--steps: must be >= 0, got -1"),
    (["sample", "x", "--samples", "0"], "--samples: must be >= 1, got 0"),
    (["sample", "x", "--seed", "-1"], "--seed: must be >= 0"),
    (["sample", "x", "--batch", "two"], "--batch: 'two' is not a whole number"),
    (["sample", "x", "y", "--interpolate", "0"], "--interpolate: must be >= 2"),
    (["sample"], "give at least one prompt"),
])
def test_bad_input_gives_a_clear_error_and_no_output(tiny_text_pipeline, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    try:
        rc = main(argv + ["--pipeline", str(tiny_text_pipeline), "--out", str(out)])
    except SystemExit as e:  # argparse refuses a bad number with its usage line
        rc = e.code
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_pipeline_says_how_to_build_one(tmp_path, capsys):
    assert main(["sample", "a circle", "--pipeline", str(tmp_path)]) == 2
    assert "tr0n-rt train --world shapes" in capsys.readouterr().err


def test_corrupt_weights_are_refused(tiny_text_pipeline, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_text_pipeline, bad)
    (bad / "translator.safetensors").write_bytes(b"\0" * 64)
    assert main(["sample", "a circle", "--pipeline", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "corrupt, truncated" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_every_subcommand_explains_its_options(capsys):
    for cmd in ("sample", "eval", "train"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = capsys.readouterr().out
        assert "usage: tr0n-rt " + cmd in text and "--seed" in text


def test_sample_checks_its_outputs_before_sampling(tiny_text_pipeline, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    args = ["sample", "a circle", "--pipeline", str(tiny_text_pipeline), "--steps", "1", "--copies", "1"]
    assert main(args + ["--out", str(tmp_path / "file")]) == 2
    assert "is a file: give a folder" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "o"), "--json", str(tmp_path)]) == 2
    assert "is a folder: give a file name" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_sample_replaces_an_earlier_run_in_the_same_folder(tiny_text_pipeline, tmp_path):
    """The new JSON describes every image in the folder: the earlier run's extra PNGs go, other files
    stay, and no staging folder is left; T = 0 energies are written as null (standard JSON)."""
    out = tmp_path / "out"
    base = ["--pipeline", str(tiny_text_pipeline), "--copies", "1", "--out", str(out)]
    assert main(["sample", "a red circle", "a blue square", "a circle", "--steps", "1"] + base) == 0
    (out / "notes.txt").write_text("mine")
    assert main(["sample", "a red square", "--steps", "0"] + base) == 0
    assert sorted(p.name for p in out.iterdir()) == ["000.png", "grid.png", "notes.txt", "samples.json"]
    data = json.loads((out / "samples.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert [r["prompt"] for r in data["images"]] == ["a red square"] and data["images"][0]["energy"] is None


def test_sample_never_removes_images_of_another_folder(tiny_text_pipeline, tmp_path, monkeypatch):
    """--json naming another run's JSON (it lists res/000.png ... for *its* folder), or a damaged JSON:
    the user's files in this run's --out stay."""
    base = ["--pipeline", str(tiny_text_pipeline), "--copies", "1", "--steps", "0", "--no-judge"]
    (tmp_path / "x").mkdir()
    monkeypatch.chdir(tmp_path / "x")
    assert main(["sample", "a red circle", "--samples", "3", "--out", "res"] + base) == 0
    (tmp_path / "y" / "res").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "y")
    for i in range(3):
        (tmp_path / "y" / "res" / f"{i:03d}.png").write_bytes(b"mine")
    assert main(["sample", "a blue square", "--out", "res", "--json", "../x/res/samples.json"] + base) == 0
    assert sorted(p.name for p in (tmp_path / "y" / "res").iterdir()) == ["000.png", "001.png", "002.png", "grid.png"]
    (tmp_path / "y" / "bad.json").write_text('{"images": null, "out": 3}')
    assert main(["sample", "a blue square", "--out", "res", "--json", "bad.json"] + base) == 0
    assert (tmp_path / "y" / "res" / "002.png").read_bytes() == b"mine"
