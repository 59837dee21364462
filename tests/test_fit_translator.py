"""Streaming, resumable translator training (fit_translator) on small pairs in the shard layout."""
import json
import math

import pytest
import torch
from tr0n_rt.export import train_translator as tt
from tr0n_rt.export.checkpoints import save_state
from tr0n_rt.export.pairs import PairsSpec, shard_path
from tr0n_rt.export.train_translator import TrainConfig, fit_translator
from tr0n_rt.export.translator import TranslatorConfig, TranslatorGMM

from tr0n_rt.atomic import write_json
from tr0n_rt.errors import BackendError, CheckpointError, ConfigError

# 190 pairs in shards of 50, 50, 50, 40: shard 3 is held out; 150 training rows = 9 batches of 16 + one of 6,
# and shards of 50 make batches that span two shards.
ROWS, SHARD = 190, 50
CONFIG = TranslatorConfig(cond_dim=6, latent_dim=4, num_components=3, init_log_std=0.0)
TRAIN = TrainConfig(epochs=3, batch_size=16, lr=1e-2, nll_scale=1.0, condition_noise=0.1, noise_mode="relative",
                    seed=1)
STEPS_PER_EPOCH = 10


def learnable(seed=0, flip_held_out=False):
    """z = A c + noise; flip_held_out: the held-out shard follows z = -A c instead (training on the first
    relation makes the held-out NLL fall, then rise)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.nn.functional.normalize(torch.randn(ROWS, 6, generator=g), dim=1)
    a = 2 * torch.randn(6, 4, generator=g)
    z = c @ a + 0.05 * torch.randn(ROWS, 4, generator=g)
    if flip_held_out:
        z[150:] = -(c[150:] @ a) + 0.05 * torch.randn(ROWS - 150, 4, generator=g)
    return z, c


def write_pairs(folder, z, c, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    spec = PairsSpec(z.shape[0], SHARD, seed, z.shape[1], c.shape[1], "test-generator", "test-condition")
    write_json(folder / "pairs.json", spec.to_index())
    for i in range(spec.num_shards):
        save_state({"z": z[i * SHARD:(i + 1) * SHARD], "c": c[i * SHARD:(i + 1) * SHARD]}, shard_path(folder, i))
    return folder


def fit(pairs, out, **kw):
    return fit_translator(pairs, out, kw.pop("config", CONFIG), kw.pop("train", TRAIN), progress=False, **kw)


def assert_same_weights(a: TranslatorGMM, b: TranslatorGMM):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def without_times(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("pairs"), *learnable())


@pytest.fixture(scope="module")
def uninterrupted(pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    return fit(pairs, out), out


def test_a_stopped_run_resumed_is_bit_identical(pairs, uninterrupted, tmp_path):
    full, full_dir = uninterrupted
    first = fit(pairs, tmp_path, stop_after_epoch=1)
    assert not first["finished"] and first["epochs_done"] == 1 and len(first["history"]) == 1
    rest = fit(pairs, tmp_path)
    assert rest["finished"] and rest["epochs_done"] == 3
    assert_same_weights(rest["model"], full["model"])
    assert_same_weights(rest["best"], full["best"])
    assert_same_weights(TranslatorGMM.load(tmp_path, "translator-last"), TranslatorGMM.load(full_dir, "translator-last"))
    assert without_times(rest["history"]) == without_times(full["history"])
    again = fit(pairs, tmp_path)  # a finished run returns at once, unchanged
    assert_same_weights(again["model"], full["model"])


@pytest.mark.parametrize("every, resumes_at", [
    ({}, (1, 0)),  # from the end of epoch 1
    ({"checkpoint_steps": 3}, (1, 6)),  # from step 6 of epoch 2 (its first shard skipped)
    ({"checkpoint_minutes": 1e-9}, (1, 7)),  # timed: after every step
])
def test_a_run_interrupted_mid_epoch_resumed_is_bit_identical(pairs, uninterrupted, tmp_path, monkeypatch,
                                                              every, resumes_at):
    full, _ = uninterrupted
    real_step, calls = tt._train_step, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == STEPS_PER_EPOCH + 8:  # the 8th step of epoch 2: past its first shard
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(tt, "_train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(pairs, tmp_path, **{"checkpoint_minutes": None, **every})
    monkeypatch.setattr(tt, "_train_step", real_step)
    state = json.loads(_metadata(tmp_path / tt.CHECKPOINT)["state"])
    assert (state["epoch"], state["step"]) == resumes_at
    resumed = fit(pairs, tmp_path)
    assert resumed["finished"]
    assert_same_weights(resumed["model"], full["model"])
    assert_same_weights(resumed["best"], full["best"])
    assert without_times(resumed["history"]) == without_times(full["history"])


def _metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def test_the_best_checkpoint_is_the_epoch_with_the_lowest_validation_nll(tmp_path):
    pairs = write_pairs(tmp_path / "pairs", *learnable(flip_held_out=True))
    train = TrainConfig(epochs=5, batch_size=16, lr=2e-2, nll_scale=1.0, seed=0)
    config = TranslatorConfig(cond_dim=6, latent_dim=4, num_components=3, init_log_std=2.0)
    weights = []
    for epoch in range(1, 6):  # one epoch per call, keeping each epoch's weights
        result = fit(pairs, tmp_path / "out", config=config, train=train, stop_after_epoch=epoch)
        weights.append(TranslatorGMM.load(tmp_path / "out", "translator-last"))
    val = [h["validation_nll"] for h in result["history"]]
    best = min(range(5), key=lambda e: val[e])
    assert 0 < best < 4, val  # a best in the middle, so "first" or "last" would not pass
    assert result["best_epoch"] == best + 1 and result["best_validation_nll"] == val[best]
    assert_same_weights(TranslatorGMM.load(tmp_path / "out", "translator-best"), weights[best])
    assert_same_weights(result["best"], weights[best])
    assert not torch.equal(weights[best].log_std, weights[-1].log_std)
    report = json.loads((tmp_path / "out" / "training.json").read_text())
    assert report["best_epoch"] == best + 1 and report["finished"]


def test_a_resume_with_other_settings_is_refused(pairs, tmp_path):
    out = tmp_path / "out"
    fit(pairs, out, stop_after_epoch=1)
    before = (out / tt.CHECKPOINT).read_bytes()
    other_data = write_pairs(tmp_path / "other-data", *learnable(seed=5))  # same pairs.json, other pairs
    other_index = write_pairs(tmp_path / "other-index", *learnable(), seed=3)
    attempts = [
        {"train": TrainConfig(**{**TRAIN.__dict__, "lr": 3e-3})},
        {"train": TrainConfig(**{**TRAIN.__dict__, "epochs": 4})},
        {"config": TranslatorConfig(cond_dim=6, latent_dim=4, num_components=2, init_log_std=0.0)},
        {"validation_shards": 2},
    ]
    for kw in attempts:
        with pytest.raises(ConfigError, match=f"other settings .*delete {out} to start over"):
            fit(pairs, out, **kw)
    for folder in (other_data, other_index):
        with pytest.raises(ConfigError, match="pairs"):
            fit(folder, out)
    assert (out / tt.CHECKPOINT).read_bytes() == before
    assert fit(pairs, out)["finished"]


def test_an_unreadable_checkpoint_is_refused(pairs, tmp_path):
    (tmp_path / tt.CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"cannot read the training checkpoint .*delete {tmp_path} to start over"):
        fit(pairs, tmp_path)


def test_held_out_shards_are_never_trained_on(tmp_path):
    z, c = learnable()
    z[150:] = float("nan")  # the held-out shard: one NaN in a training batch makes every weight NaN
    pairs = write_pairs(tmp_path / "pairs", z, c)
    with pytest.raises(CheckpointError, match="no epoch reached a finite validation NLL"):
        fit(pairs, tmp_path / "out", train=TrainConfig(**{**TRAIN.__dict__, "epochs": 2}))
    last = TranslatorGMM.load(tmp_path / "out", "translator-last")
    assert all(torch.isfinite(p).all() for p in last.state_dict().values())
    report = json.loads((tmp_path / "out" / "training.json").read_text())
    assert report["pairs"]["validation_shards"] == [3] and report["pairs"]["train_rows"] == 150
    assert all(math.isfinite(h["train_nll"]) for h in report["history"])
    assert all(h["validation_nll"] is None for h in report["history"])  # NaN, written as null: it was read


def test_the_default_split_holds_out_the_last_five_percent_of_shards():
    assert tt._validation_split(1, None) == []
    assert tt._validation_split(2, None) == [1]
    assert tt._validation_split(20, None) == [19]
    assert tt._validation_split(21, None) == [19, 20]
    assert len(tt._validation_split(245, None)) == 13
    with pytest.raises(ConfigError, match="at least one shard"):
        tt._validation_split(3, 3)


def test_validation_nll_decreases_on_learnable_data(pairs, uninterrupted, tmp_path):
    full, _ = uninterrupted
    val = [h["validation_nll"] for h in full["history"]]
    clean = [h["validation_nll_clean"] for h in full["history"]]
    assert val[-1] < val[0] - 1.0 and val == sorted(val, reverse=True), val
    assert clean[-1] < clean[0] - 1.0 and clean != val, (clean, val)
    image = fit(pairs, tmp_path, train=TrainConfig(**{**TRAIN.__dict__, "condition_noise": 0.0, "epochs": 2}))
    assert [h["validation_nll"] for h in image["history"]] == [h["validation_nll_clean"] for h in image["history"]]
    assert image["history"][-1]["validation_nll"] < image["history"][0]["validation_nll"]


def test_devices_are_checked(pairs, tmp_path):
    with pytest.raises(ConfigError, match="use cpu, cuda or cuda:N"):
        fit(pairs, tmp_path, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="use --device cpu"):
            fit(pairs, tmp_path, device="cuda")
    assert not any(tmp_path.iterdir())
