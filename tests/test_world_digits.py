"""The digits world: the classifier condition model, class parsing, the build's format, and the shipped models."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tr0n_rt.errors import PromptError
from tr0n_rt.export.checkpoints import load_weights
from tr0n_rt.export.models.classifier import CNNClassifier
from tr0n_rt.export.models.registry import build_condition_model, build_generator
from tr0n_rt.export.worlds import digits
from tr0n_rt.export.worlds.digits import DigitsJudge
from tr0n_rt.export.worlds.digits.data import load_split, random_shift

ENGINE = Path(__file__).resolve().parents[1] / "engines" / "digits"
SHIPPED = ENGINE / "judge.safetensors"
needs_shipped = pytest.mark.skipif(
    not (SHIPPED.is_file() and (ENGINE / "generator.safetensors").is_file()),
    reason=f"no shipped digits models in {ENGINE}: run digits.build_models on that folder first",
)


# -- the classifier as TR0N's condition model ---------------------------------------------------

def test_classifier_score_is_minus_cross_entropy():
    torch.manual_seed(0)
    clf = CNNClassifier(width=4).eval()
    images = torch.rand(5, 1, 32, 32) * 2 - 1
    target = torch.tensor([3, 0, 9, 3, 7])
    score = clf.score(images, F.one_hot(target, 10).float())
    torch.testing.assert_close(score, -F.cross_entropy(clf.logits(images), target, reduction="none"))

    soft = clf.encode_images(images)  # a soft c, as in TR0N's synthetic pairs
    torch.testing.assert_close(soft.sum(-1), torch.ones(5))
    torch.testing.assert_close(clf.score(images, soft), -F.cross_entropy(clf.logits(images), soft, reduction="none"))


def test_classifier_registry_round_trip():
    clf = CNNClassifier(num_classes=10, channels=1, image_size=32, width=8)
    again = build_condition_model("cnn_classifier", clf.config())
    assert again.kind == "classifier" and again.cond_dim == 10 and again.config() == clf.config()


def test_classifier_score_has_gradient_wrt_images():
    clf = CNNClassifier(width=4).eval()
    images = torch.zeros(2, 1, 32, 32, requires_grad=True)
    clf.score(images, F.one_hot(torch.tensor([1, 2]), 10).float()).sum().backward()
    assert images.grad.abs().sum() > 0


# -- class names ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("3", 3), ("digit 3", 3), ("three", 3), ("Three", 3), (" digit seven ", 7), ("the digit 0", 0), ("nine", 9), (5, 5),
])
def test_parse_class(text, expected):
    from tr0n_rt.export.worlds.digits.judge import JudgeNet

    assert DigitsJudge(JudgeNet()).parse_class(text) == expected


@pytest.mark.parametrize("text", ["10", "ten", "cat", "", "digit", "3 4", "-1"])
def test_parse_class_rejects_with_accepted_names(text):
    from tr0n_rt.export.worlds.digits.judge import JudgeNet

    with pytest.raises(PromptError, match="accepted: 0, 1, 2.*zero, one"):
        DigitsJudge(JudgeNet()).parse_class(text)


def test_judge_checks_family_shapes_and_counts(tmp_path):
    from tr0n_rt.errors import ConfigError, ShapeError
    from tr0n_rt.export.worlds.digits.judge import JudgeNet

    judge = DigitsJudge(JudgeNet(width=4))
    images = torch.zeros(2, 1, 32, 32)
    verdicts = judge.verdicts(images.numpy(), ["3", "digit three"])  # numpy works too
    assert [v["target"] for v in verdicts] == ["3", "3"] and all(isinstance(v["correct"], bool) for v in verdicts)
    with pytest.raises(ShapeError):
        judge.verdicts(torch.zeros(2, 3, 32, 32), ["3", "4"])
    with pytest.raises(ShapeError):
        judge.verdicts(images, ["3"])
    with pytest.raises(ConfigError):
        DigitsJudge.load({"family": "shapes_judge", "config": {}, "weights": "judge.safetensors"}, tmp_path)


# -- data and build format -----------------------------------------------------------------------

def test_random_shift_moves_content_and_fills_background():
    x = torch.full((4, 1, 8, 8), -1.0)
    x[:, :, 3:5, 3:5] = 1.0
    shifted = random_shift(x, 2, generator=torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape
    assert (shifted == 1.0).sum(dim=(1, 2, 3)).tolist() == [4, 4, 4, 4]  # a 2x2 blob, 2 px from the border, survives
    assert torch.equal(random_shift(x, 0), x)


def test_build_models_format(tmp_path, monkeypatch):
    # A tiny build (a few steps) checks the manifest fragment and that it rebuilds the saved models.
    from tr0n_rt.export.worlds.digits import build
    monkeypatch.setattr(build, "GAN_STEPS", 3)
    monkeypatch.setattr(build, "CLASSIFIER_EPOCHS", 1)
    monkeypatch.setattr(build, "load_split", lambda *a, **k: tuple(t[:128] for t in load_split(*a, **k)))
    spec = digits.build_models(tmp_path, seed=0, progress=False)
    json.dumps(spec)  # manifest-ready
    assert spec["classes"] == [str(i) for i in range(10)] and spec["condition"] == "class"
    assert spec["tokenizer"] is None and len(spec["prompts"]) >= 120 and set(spec["prompts"]) == set(spec["classes"])
    gen = build_generator(spec["generator"]["family"], spec["generator"]["config"])
    load_weights(gen, tmp_path / spec["generator"]["weights"])
    clf = build_condition_model(spec["condition_model"]["family"], spec["condition_model"]["config"])
    load_weights(clf, tmp_path / spec["condition_model"]["weights"])
    assert gen.image_size == clf.image_size and gen.channels == clf.channels
    assert spec["judge"]["family"] == "digits_judge"
    DigitsJudge.load(spec["judge"], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classifier.safetensors", "generator.safetensors",
                                                          "judge.safetensors"]  # no temporary files left
    assert digits.WORLD_INFO["name"] == "digits" and digits.WORLD_INFO["translator"]["num_components"] == 10


# -- the shipped models in engines/digits ----------------------------------------------------------

def _shipped_spec(name: str) -> dict:
    """family + config from the safetensors metadata that build_models writes into every file."""
    from safetensors import safe_open

    with safe_open(str(ENGINE / f"{name}.safetensors"), "pt") as f:
        meta = f.metadata()
    return {"family": meta["family"], "config": json.loads(meta["config"]), "weights": f"{name}.safetensors"}


def _shipped_judge() -> DigitsJudge:
    return DigitsJudge.load(_shipped_spec("judge"), ENGINE)


@needs_shipped
def test_shipped_judge_recognises_real_test_digits():
    _, _, x_test, y_test = load_split(seed=0)
    verdicts = _shipped_judge().verdicts(x_test, [str(int(y)) for y in y_test])
    assert set(verdicts[0]) >= {"predicted", "confidence", "target", "correct"}
    accuracy = sum(v["correct"] for v in verdicts) / len(verdicts)
    assert accuracy > 0.95, f"judge accuracy on the real test split is {accuracy:.3f}"


@needs_shipped
def test_shipped_judge_rejects_wrong_targets():
    _, _, x_test, y_test = load_split(seed=0)
    wrong = [str((int(y) + 1) % 10) for y in y_test[:50]]
    assert not any(v["correct"] for v in _shipped_judge().verdicts(x_test[:50], wrong))


@needs_shipped
def test_shipped_generator_covers_many_classes():
    spec = _shipped_spec("generator")
    gen = load_weights(build_generator(spec["family"], spec["config"]), ENGINE / spec["weights"]).eval()
    with torch.no_grad():
        images = gen(gen.latent.sample_prior(100, generator=torch.Generator().manual_seed(7)))
    probs = torch.from_numpy(_shipped_judge().probabilities(images)["class"])
    confident = probs.max(-1).values > 0.9
    classes = set(probs.argmax(-1)[confident].tolist())
    assert len(classes) >= 6, f"the judge confidently sees only classes {sorted(classes)} in 100 samples"
