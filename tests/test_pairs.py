"""Synthetic pairs at scale: split runs, resumes after kills and full disks, the reading API and its
refusals, the on-disk size formula, the progress bar."""
from __future__ import annotations

import errno
import json

import pytest
import torch
from tr0n_rt.export import pairs as pairs_mod
from tr0n_rt.export.checkpoints import save_state
from tr0n_rt.export.models.registry import build_condition_model, build_generator
from tr0n_rt.export.pairs import (
    load_pairs,
    make_pairs,
    pairs_bytes,
    pairs_index,
    read_shard,
    shard_path,
)
from tr0n_rt.export.pipeline import build_part

from tr0n_rt.errors import BackendError, CheckpointError, ConfigError

KW = {"seed": 5, "shard_size": 8, "batch_size": 4, "progress": False}
COUNT = 50  # 7 shards, the last of 2 pairs


@pytest.fixture(scope="module")
def models(tiny_text_pipeline):
    spec = json.loads((tiny_text_pipeline / "pipeline.json").read_text())
    g = build_part(tiny_text_pipeline, spec["generator"], build_generator, "generator")
    f = build_part(tiny_text_pipeline, spec["condition_model"], build_condition_model, "condition_model")
    return g.eval(), f.eval()


@pytest.fixture(scope="module")
def reference(models, tmp_path_factory):
    """One uninterrupted run: {file name: bytes}."""
    folder = tmp_path_factory.mktemp("reference")
    make_pairs(*models, COUNT, folder, **KW)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def contents(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_run_split_into_shard_ranges_equals_one_run(models, reference, tmp_path):
    assert len(reference) == 8  # 7 shards + pairs.json
    make_pairs(*models, COUNT, tmp_path, shards=(0, 3), **KW)
    assert sorted(contents(tmp_path)) == ["pairs-00000.safetensors", "pairs-00001.safetensors",
                                          "pairs-00002.safetensors", "pairs.json"]
    with pytest.raises(CheckpointError, match=r"lacks 4 of 7 shards \(3-6\).*shards=\(3, 7\)"):
        pairs_index(tmp_path)
    make_pairs(*models, COUNT, tmp_path, shards=(3, 7), **KW)
    assert contents(tmp_path) == reference


def test_an_interrupted_run_resumes_to_the_same_pairs(models, reference, tmp_path, capsys):
    for name, data in reference.items():
        (tmp_path / name).write_bytes(data)
    shard_path(tmp_path, 2).unlink()                                    # killed before shard 2 was renamed in
    shard_path(tmp_path, 4).write_bytes(reference["pairs-00004.safetensors"][:300])  # a truncated copy
    stale = tmp_path / ".pairs-00002.safetensors.abc123.part"           # a killed write's temporary
    stale.write_bytes(b"half")
    save_state({"z": torch.zeros(8, 3), "c": torch.zeros(8, 16)}, shard_path(tmp_path, 5))  # wrong width
    mtime0 = shard_path(tmp_path, 0).stat().st_mtime_ns
    make_pairs(*models, COUNT, tmp_path, **KW)
    err = capsys.readouterr().err
    assert "pairs-00004.safetensors: it does not open as safetensors" in err and "remaking it" in err
    assert "pairs-00005.safetensors: its z is F32 [8, 3], expected F32 [8, 8]" in err
    assert contents(tmp_path) == reference  # the stale temporary is gone too
    assert shard_path(tmp_path, 0).stat().st_mtime_ns == mtime0  # a good shard is not remade


def test_a_full_disk_stops_with_a_typed_error_and_a_rerun_completes(models, reference, tmp_path, monkeypatch):
    import safetensors.torch

    real, calls = safetensors.torch.save_file, []

    def full_on_third(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 3:  # the disk fills half-way through the third shard
            with open(filename, "wb") as fh:
                fh.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", full_on_third)
    with pytest.raises(CheckpointError, match=r"cannot write .*pairs-00002\.safetensors.*disk is full: free "
                                              r"space.*rerun to resume.*already written are kept"):
        make_pairs(*models, COUNT, tmp_path, **KW)
    assert sorted(contents(tmp_path)) == ["pairs-00000.safetensors", "pairs-00001.safetensors", "pairs.json"]
    assert all(contents(tmp_path)[n] == reference[n] for n in contents(tmp_path))  # no partial file either
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    make_pairs(*models, COUNT, tmp_path, **KW)
    assert contents(tmp_path) == reference


def test_an_index_write_error_is_typed(models, tmp_path, monkeypatch):
    def fail(path, obj):
        raise OSError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(pairs_mod, "write_json", fail)
    with pytest.raises(CheckpointError, match=r"cannot write .*pairs\.json \(Permission denied\): check that "
                                              r"the folder is writable"):
        make_pairs(*models, COUNT, tmp_path, **KW)


def test_read_shard_gives_each_shard_and_load_pairs_all(models, reference, tmp_path):
    for name, data in reference.items():
        (tmp_path / name).write_bytes(data)
    spec = pairs_index(tmp_path)
    assert (spec.num_shards, spec.num_pairs, spec.latent_dim, spec.cond_dim) == (7, 50, 8, 16)
    shards = [read_shard(tmp_path, i) for i in range(spec.num_shards)]
    assert [z.shape[0] for z, _ in shards] == [8] * 6 + [2]
    assert all(z.dtype == c.dtype == torch.float32 and c.shape[1] == 16 for z, c in shards)
    z, c, _ = load_pairs(tmp_path)
    assert torch.equal(z, torch.cat([s[0] for s in shards])) and torch.equal(c, torch.cat([s[1] for s in shards]))
    # c = f(G(z)), recomputed apart from make_pairs
    g, f = models
    with torch.no_grad():
        torch.testing.assert_close(c[:8], f.encode_images(g(z[:8])), rtol=1e-5, atol=1e-6)
    # z is drawn for the whole shard: the same at another batch size
    make_pairs(g, f, 16, tmp_path / "b16", **{**KW, "batch_size": 16})
    assert torch.equal(read_shard(tmp_path / "b16", 1)[0], shards[1][0])


def test_reading_refusals_are_typed_and_name_the_fix(models, reference, tmp_path):
    with pytest.raises(CheckpointError, match=r"no pairs\.json: make pairs first: tr0n-rt pairs DIR"):
        pairs_index(tmp_path)
    with pytest.raises(CheckpointError, match="make pairs first"):
        read_shard(tmp_path, 0)
    for name, data in reference.items():
        (tmp_path / name).write_bytes(data)
    for i in (1, 2, 3, 5):
        shard_path(tmp_path, i).unlink()
    with pytest.raises(CheckpointError, match=r"lacks 4 of 7 shards \(1-3, 5\): rerun to resume \(tr0n-rt pairs"):
        pairs_index(tmp_path)
    with pytest.raises(CheckpointError, match=r"pairs-00002\.safetensors is missing: rerun to resume.*shards=\(2, 3\)"):
        read_shard(tmp_path, 2)
    with pytest.raises(ConfigError, match=r"not one of .* shards 0\.\.6"):
        read_shard(tmp_path, 7)
    for i in (1, 2, 3, 5):
        shard_path(tmp_path, i).write_bytes(reference[shard_path(tmp_path, i).name])
    save_state({"z": torch.zeros(8, 8), "c": torch.zeros(8, 32)}, shard_path(tmp_path, 3))  # another f's widths
    with pytest.raises(CheckpointError, match=r"pairs-00003\.safetensors: its c is F32 \[8, 32\], expected F32 "
                                              r"\[8, 16\].*rerun to resume"):
        pairs_index(tmp_path)
    with pytest.raises(CheckpointError, match=r"holds z torch\.float32 \[8, 8\], c torch\.float32 \[8, 32\], but "
                                              r"pairs\.json says float32 z \[8, 8\] and c \[8, 16\].*delete it"):
        read_shard(tmp_path, 3)
    (tmp_path / "pairs.json").write_text('{"count": 50}')
    with pytest.raises(CheckpointError, match="not a pairs index"):
        pairs_index(tmp_path)


def test_make_pairs_refuses_bad_ranges_and_devices(models, tmp_path):
    for bad in ((3, 3), (-1, 2), (0, 8), (5, 2), (1, 2, 3), 4, (0.0, 2)):
        with pytest.raises(ConfigError, match=r"0 <= start < stop <= 7"):
            make_pairs(*models, COUNT, tmp_path, shards=bad, **KW)
    for bad in ("tpu", "gpu0", "meta"):
        with pytest.raises(ConfigError, match="use cpu, cuda or cuda:N"):
            make_pairs(*models, COUNT, tmp_path, device=bad, **KW)
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="sees 0 CUDA device.*use --device cpu"):
            make_pairs(*models, COUNT, tmp_path, device="cuda:0", **KW)
    with pytest.raises(ConfigError, match="batch_size must be a positive int"):
        make_pairs(*models, COUNT, tmp_path, **{**KW, "batch_size": 0})
    assert not any(tmp_path.iterdir())  # refused before writing anything


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pairs_on_cuda_draw_the_same_z_and_close_c(models, reference, tmp_path):
    g, f = models
    make_pairs(g, f, COUNT, tmp_path / "cuda", device="cuda", **KW)
    assert next(g.parameters()).device.type == next(f.parameters()).device.type == "cpu"  # moved back
    (tmp_path / "cpu").mkdir()
    for name, data in reference.items():
        (tmp_path / "cpu" / name).write_bytes(data)
    z, c, _ = load_pairs(tmp_path / "cuda")
    z0, c0, _ = load_pairs(tmp_path / "cpu")
    assert (tmp_path / "cuda" / "pairs.json").read_bytes() == reference["pairs.json"]
    assert torch.equal(z, z0)  # drawn on the CPU
    torch.testing.assert_close(c, c0, rtol=1e-3, atol=1e-4)  # rounding differs


def test_pairs_bytes_is_the_size_on_disk(models, reference, tmp_path):
    assert pairs_bytes(COUNT, 8, 16, shard_size=8) == sum(len(v) for n, v in reference.items() if n != "pairs.json")
    for count, d, dc, s in ((10, 512, 512, 4), (9, 256, 512, 4), (4096, 3, 1000, 4096)):
        folder = tmp_path / f"{d}-{dc}-{count}"
        for i in range(-(-count // s)):
            rows = min(s, count - i * s)
            save_state({"z": torch.randn(rows, d), "c": torch.randn(rows, dc)}, shard_path(folder, i), metadata={})
        assert pairs_bytes(count, d, dc, shard_size=s) == sum(p.stat().st_size for p in folder.iterdir())


def test_the_progress_bar_counts_pairs_of_the_range_and_shows_resumed_ones_done(models, tmp_path, monkeypatch):
    import tqdm.auto

    bars = []

    class Recorder:
        def __init__(self, **kw):
            self.kw, self.updates = kw, []
            bars.append(self)

        def update(self, n):
            self.updates.append(n)

        def close(self):
            pass

        write = staticmethod(lambda *a, **k: None)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    make_pairs(*models, COUNT, tmp_path, shards=(2, 7), **KW)
    shard_path(tmp_path, 4).unlink()
    make_pairs(*models, COUNT, tmp_path, **KW)
    first, second = bars
    assert first.kw["unit"] == "pair" and first.kw["unit_scale"] is True
    assert (first.kw["total"], first.kw["initial"], sum(first.updates)) == (34, 0, 34)
    assert (second.kw["total"], second.kw["initial"], sum(second.updates)) == (50, 26, 24)  # made: 0, 1, 4
