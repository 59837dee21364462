"""The own-models road as a user runs it: checkpoint files in each tool's own layout -> create -> pairs ->
train -> export -> sample, with interrupted pairs and training resumed to the same bytes as an
uninterrupted run. Small models of the real architectures (a rosinality StyleGAN2 at 32 px, an open_clip
model from a custom config with CLIP's real vocabulary) keep it within CI's budget."""
import json

import numpy as np
import pytest
import torch

from tr0n_rt.cli import main
from tr0n_rt.errors import CheckpointError, ConfigError

CLIP_CFG = {  # open_clip.CLIP keyword arguments: CLIP's own tokenizer needs its 49408-token vocabulary
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
SETTINGS = ["pairs=1536", "epochs=2", "batch_size=64", "num_components=3", "steps=2", "copies=2"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A rosinality StyleGAN2 .pt ({"g_ema": ...} in rosinality's key names) and an open_clip checkpoint."""
    import open_clip
    from tr0n_rt.export.models.stylegan2 import StyleGAN2Generator
    from tr0n_rt.export.models.stylegan2_import import to_rosinality

    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    g = StyleGAN2Generator(resolution=32, w_dim=16, z_dim=12, channel_base=256, channel_max=32)
    torch.save({"g_ema": to_rosinality(g.state_dict(), 32, 8)}, folder / "stylegan2-32.pt")
    torch.save(open_clip.CLIP(**CLIP_CFG).state_dict(), folder / "clip.pt")
    (folder / "clip.json").write_text(json.dumps(CLIP_CFG))
    return folder


def create(ckpt, folder, *extra):
    return main(["create", str(folder), "--generator", "stylegan2", "--generator-weights", str(ckpt / "stylegan2-32.pt"),
                 "--clip-config", str(ckpt / "clip.json"), "--clip-weights", str(ckpt / "clip.pt"),
                 "--set", *SETTINGS, *extra])


def shard_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted((folder / "pairs").glob("pairs-*.safetensors"))}


def test_checkpoints_to_samples_with_interrupted_steps_resumed(checkpoints, tmp_path, capsys):
    from tr0n_rt.export.workflow import train_pipeline

    a, b = tmp_path / "a", tmp_path / "b"
    assert create(checkpoints, a) == 0 and create(checkpoints, b) == 0
    spec = json.loads((a / "pipeline.json").read_text())
    assert spec["translator"] is None and spec["recipe"]["condition_noise"] == 0.2  # StyleGAN2's reference noise
    assert spec["sampling"]["latent_lr"] == 0.1 and spec["recipe"]["pairs"] == 1536
    capsys.readouterr()
    assert main(["info", str(a)]) == 0 and f"next: tr0n-rt pairs {a}" in capsys.readouterr().out

    # pairs: a in two shard ranges with a shard lost in between, b in one run
    pairs = ["--batch", "64", "--shard-size", "512"]
    assert main(["pairs", str(a), *pairs, "--shards", "0:2"]) == 0
    (a / "pairs" / "pairs-00001.safetensors").unlink()
    assert main(["pairs", str(a), *pairs]) == 0
    assert main(["pairs", str(b), *pairs]) == 0
    assert shard_bytes(a) == shard_bytes(b) and len(shard_bytes(a)) == 3

    # training: a stopped after its first epoch and resumed, b uninterrupted
    first = train_pipeline(a, stop_after_epoch=1, progress=False)
    assert json.loads((a / "pipeline.json").read_text())["translator"] is None, first
    assert main(["train", "--pipeline", str(a)]) == 0
    assert main(["train", "--pipeline", str(b)]) == 0
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "translator.safetensors")), load_file(str(b / "translator.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    capsys.readouterr()
    assert main(["info", str(a)]) == 0 and f"next: tr0n-rt export --pipeline {a}" in capsys.readouterr().out

    # export and sample with the torch-free runtime
    assert main(["export", "--pipeline", str(a), "--no-fp16"]) == 0
    assert main(["sample", "a red circle", "--pipeline", str(a), "--samples", "2", "--backend", "onnxruntime",
                 "--out", str(tmp_path / "out")]) == 0
    records = json.loads((tmp_path / "out" / "samples.json").read_text())["images"]
    assert len(records) == 2 and all(np.isfinite(r["energy"]) for r in records)


def test_mismatches_are_refused_before_any_work(checkpoints, tmp_path):
    from tr0n_rt.export.create import create_pipeline

    ok = {"generator": "stylegan2", "generator_weights": checkpoints / "stylegan2-32.pt",
          "clip_config": CLIP_CFG, "clip_weights": checkpoints / "clip.pt"}
    with pytest.raises(CheckpointError, match="does not exist: pass the file with --generator-weights"):
        create_pipeline(tmp_path / "p", **{**ok, "generator_weights": tmp_path / "nowhere.pt"})
    with pytest.raises(CheckpointError, match="not a biggan checkpoint.*pass --generator with one of"):
        create_pipeline(tmp_path / "p", **{**ok, "generator": "biggan"})
    with pytest.raises(CheckpointError, match="does not fit open_clip model"):  # another embedding size
        create_pipeline(tmp_path / "p", **{**ok, "clip_config": {**CLIP_CFG, "embed_dim": 24}})
    with pytest.raises(ConfigError, match="unknown recipe field"):
        create_pipeline(tmp_path / "p", **ok, recipe={"pair": 10})
    for bad in ({"epochs": 2.5}, {"batch_size": 16.0}, {"num_components": 0}, {"pairs": "many"}, {"mean_bound": -1}):
        with pytest.raises(ConfigError, match="invalid recipe value"):
            create_pipeline(tmp_path / "p", **ok, recipe=bad)
    with pytest.raises(ConfigError, match="keep the recipe's mean_bound"):  # BigGAN's latent is bounded
        create_pipeline(tmp_path / "p", **{**ok, "generator": "biggan"}, recipe={"mean_bound": None})
    with pytest.raises(ConfigError, match="not an open_clip model config"):
        create_pipeline(tmp_path / "p", **{**ok, "clip_config": {**CLIP_CFG, "bogus": 1}})
    with pytest.raises(ConfigError, match="CLIP's BPE"):  # the runtime tokenizer could not feed it
        create_pipeline(tmp_path / "p", **{**ok, "clip_config": {**CLIP_CFG, "text_cfg": {
            **CLIP_CFG["text_cfg"], "vocab_size": 32000}}})
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(ConfigError, match="not an empty folder"):
        create_pipeline(tmp_path / "full", **ok)
    assert not (tmp_path / "p").exists() and (tmp_path / "full" / "x").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind


def test_a_translator_of_other_sizes_is_refused_on_import(checkpoints, tmp_path):
    from tr0n_rt.export.translator import TranslatorConfig, TranslatorGMM
    from tr0n_rt.export.workflow import import_translator

    assert create(checkpoints, tmp_path / "p") == 0
    other = TranslatorGMM(TranslatorConfig(cond_dim=32, latent_dim=16))  # this CLIP gives 16, not 32
    theirs = {"shared1": "shared1", "shared2": "shared2", "means_layer": "layer", "logits_layer": "mixture_logits"}
    reference = {"w_log_stds": other.state_dict()["log_std"]} | {
        f"w_{theirs[k.rpartition('.')[0]]}.{k.rpartition('.')[2]}": v for k, v in other.state_dict().items() if k != "log_std"}
    torch.save({"translator_state_dict": reference}, tmp_path / "ref.pt")
    with pytest.raises(CheckpointError, match="maps conditions of size 32"):
        import_translator(tmp_path / "p", tmp_path / "ref.pt")


def test_a_step_run_too_early_says_which_step_comes_first(checkpoints, tmp_path, capsys):
    p = tmp_path / "p"
    assert create(checkpoints, p) == 0
    capsys.readouterr()
    assert main(["train", "--pipeline", str(p)]) == 2
    assert f"no synthetic pairs yet: make them first with `tr0n-rt pairs {p}`" in capsys.readouterr().err
    assert main(["export", "--pipeline", str(p)]) == 2
    assert f"`tr0n-rt pairs {p}`, then `tr0n-rt train --pipeline {p}`" in capsys.readouterr().err
    assert json.loads((p / "pipeline.json").read_text())["translator"] is None  # nothing half-done


def test_caption_pairs_through_a_registered_captioner(checkpoints, tmp_path):
    from tr0n_rt.export.pairs import load_captions
    from tr0n_rt.export.worlds.shapes.captioner import save_captioner
    from tr0n_rt.export.worlds.shapes.judge import JudgeNet

    p = tmp_path / "p"
    assert create(checkpoints, p) == 0
    save_captioner(JudgeNet(width=8), tmp_path / "cap.safetensors")
    config = json.dumps({"weights": str(tmp_path / "cap.safetensors"), "width": 8})
    assert main(["pairs", str(p), "--count", "32", "--batch", "16", "--captioner", "shapes_attributes",
                 "--captioner-config", config]) == 0
    captions = load_captions(p / "pairs")
    assert len(captions) == 32 and all(isinstance(c, str) and c for c in captions)
    assert json.loads((p / "pairs" / "pairs.json").read_text())["captioner"]["name"] == "shapes_attributes"


def test_train_refuses_the_other_modes_options(capsys):
    assert main(["train", "--world", "shapes", "--epochs", "3"]) == 2
    assert "--epochs do(es) not apply with --world" in capsys.readouterr().err
    assert main(["train", "--pipeline", "p", "--seed", "1"]) == 2
    assert "--seed do(es) not apply with --pipeline" in capsys.readouterr().err


def test_a_long_inline_json_config_is_read_as_json():
    from tr0n_rt.cli_pipeline import json_file

    assert json_file(json.dumps(CLIP_CFG | {"note": "x" * 300})) == CLIP_CFG | {"note": "x" * 300}


@pytest.mark.slow  # a local Ray instance: ~10 s to start
def test_pairs_on_a_local_ray_cluster_equal_a_single_process_run(checkpoints, tmp_path):
    """`tr0n-rt pairs --ray`: workers make the shards, the driver writes them; the folder is the one a
    single process writes, byte for byte, and a lost shard is remade on resume."""
    pytest.importorskip("ray")
    one, spread = tmp_path / "one", tmp_path / "spread"
    for folder in (one, spread):
        assert create(checkpoints, folder) == 0
    pairs = ["--batch", "64", "--shard-size", "256", "--count", "1280"]  # 5 shards
    assert main(["pairs", str(one), *pairs]) == 0
    ray = ["--ray", "local", "--workers", "2", "--cpus-per-worker", "0.5"]
    assert main(["pairs", str(spread), *pairs, *ray]) == 0
    assert shard_bytes(spread) == shard_bytes(one) and len(shard_bytes(one)) == 5
    assert (spread / "pairs" / "pairs.json").read_bytes() == (one / "pairs" / "pairs.json").read_bytes()
    (spread / "pairs" / "pairs-00003.safetensors").unlink()
    assert main(["pairs", str(spread), *pairs, *ray]) == 0
    assert shard_bytes(spread) == shard_bytes(one)
