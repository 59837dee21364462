"""Builds the digits world: a DCGAN G, the energy's classifier f, and an independent judge.

    spec = build_models(Path("engines/digits"))   # ~3-4 min on one CPU thread

writes generator.safetensors, classifier.safetensors and judge.safetensors into out_dir and returns
the manifest fragment (family + config + weights per model) that rebuilds them.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ...checkpoints import save_state
from ...models.classifier import CNNClassifier
from .data import CLASSES, IMAGE_SIZE, load_split
from .judge import DigitsJudge, JudgeNet
from .train import accuracy, train_classifier, train_gan

WORLD_INFO = {
    "name": "digits",
    "condition": "class",
    "translator": {"n_pairs": 20000, "condition_noise": 0.0, "num_components": 10},
}

LATENT_DIM = 32
GAN_STEPS = 3000
CLASSIFIER_EPOCHS = 20


def build_models(out_dir: Path, seed: int = 0, progress: bool = True) -> dict:
    out_dir = Path(out_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convs: one thread is as fast and leaves the other cores free
    try:
        x_train, y_train, _, _ = load_split(IMAGE_SIZE, seed=seed)
        gen = train_gan(x_train, latent_dim=LATENT_DIM, steps=GAN_STEPS, seed=seed, progress=progress)
        clf = train_classifier(CNNClassifier(image_size=IMAGE_SIZE, width=16), x_train, y_train,
                               epochs=CLASSIFIER_EPOCHS, seed=seed + 1, progress=progress, desc="classifier")
        judge = train_classifier(JudgeNet(image_size=IMAGE_SIZE, width=24), x_train, y_train,
                                 epochs=CLASSIFIER_EPOCHS, seed=seed + 2, progress=progress, desc="judge")
    finally:
        torch.set_num_threads(threads)

    # Each file also carries its family and config as metadata, so it describes itself without the manifest.
    for module, family, name in ((gen, "dcgan", "generator"), (clf, "cnn_classifier", "classifier"),
                                 (judge, "digits_judge", "judge")):
        meta = {"world": "digits", "family": family, "config": json.dumps(module.config())}
        save_state(module.state_dict(), out_dir / f"{name}.safetensors", meta)
    return {
        "generator": {"family": "dcgan", "config": gen.config(), "weights": "generator.safetensors"},
        "condition_model": {"family": "cnn_classifier", "config": clf.config(), "weights": "classifier.safetensors"},
        "tokenizer": None,
        "classes": list(CLASSES),
        "judge": {"family": "digits_judge", "config": judge.config(), "weights": "judge.safetensors"},
        "condition": "class",
        "prompts": [CLASSES[i % len(CLASSES)] for i in range(120)],
    }


@torch.no_grad()
def evaluate_models(folder: Path, spec: dict, n_samples: int = 400, seed: int = 0) -> dict:
    """Test-split accuracies of f and the judge, and the judge's view of n_samples prior samples of G."""
    from ...checkpoints import load_weights
    from ...models.dcgan import DCGANGenerator

    folder = Path(folder)
    _, _, x_test, y_test = load_split(IMAGE_SIZE, seed=seed)
    gen = load_weights(DCGANGenerator(**spec["generator"]["config"]), folder / spec["generator"]["weights"]).eval()
    clf = load_weights(CNNClassifier(**spec["condition_model"]["config"]), folder / spec["condition_model"]["weights"])
    judge = DigitsJudge.load(spec["judge"], folder)

    z = gen.latent.sample_prior(n_samples, generator=torch.Generator().manual_seed(seed + 123))
    conf, pred = torch.from_numpy(judge.probabilities(gen(z).detach())["class"]).max(-1)
    return {
        "classifier_test_accuracy": accuracy(clf, x_test, y_test),
        "judge_test_accuracy": accuracy(judge.net, x_test, y_test),
        "samples_confident_fraction": (conf > 0.9).float().mean().item(),
        "samples_class_histogram": pred.bincount(minlength=len(CLASSES)).tolist(),
    }
