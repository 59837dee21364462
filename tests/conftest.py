"""Shared fixtures: tiny random-weight pipelines built with the real adapters (no downloads)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 16, "width": 32, "heads": 2, "layers": 1},
}
WORDS = ["a", "red", "blue", "circle", "square", "on", "white", "background"]


def build_tiny_pipeline(folder, condition: str = "text", latent_dim: int = 8, components: int = 3, seed: int = 0,
                        image_features: bool = False):
    """Writes a random-weight pipeline (DCGAN 16x16 + tiny CLIP or CNN classifier) into folder;
    image_features adds an image translator and an aesthetic head (text pipelines)."""
    from tr0n_rt.export.augment import AugmentConfig
    from tr0n_rt.export.checkpoints import save_state
    from tr0n_rt.export.models.registry import build_condition_model, build_generator
    from tr0n_rt.export.pipeline import write_pipeline
    from tr0n_rt.export.translator import TranslatorConfig, TranslatorGMM
    from tr0n_rt.settings import SamplingConfig
    from tr0n_rt.tokenizer import WordTokenizer

    torch.manual_seed(seed)
    channels = 3 if condition == "text" else 1
    gen_cfg = {"latent_dim": latent_dim, "image_size": 16, "channels": channels, "width": 8}
    g = build_generator("dcgan", gen_cfg)
    for m in g.modules():  # DCGAN's N(0, 0.02) init draws near-blank images; make them vivid
        if isinstance(m, torch.nn.ConvTranspose2d):
            torch.nn.init.normal_(m.weight, 0.0, 1.0 / (m.weight.shape[0] * 4) ** 0.5)
    if condition == "text":
        f_spec = {"family": "open_clip", "config": {"model_cfg": TINY_CLIP}}
        tokenizer = WordTokenizer(WORDS, context_length=8).to_dict()
        classes = None
    else:
        f_spec = {"family": "cnn_classifier", "config": {"num_classes": 4, "channels": 1, "image_size": 16, "width": 8}}
        tokenizer, classes = None, ["0", "1", "2", "3"]
    f = build_condition_model(f_spec["family"], f_spec["config"])
    save_state(g.state_dict(), folder / "generator.safetensors")
    save_state(f.state_dict(), folder / "condition.safetensors")
    t = TranslatorGMM(TranslatorConfig(cond_dim=f.cond_dim, latent_dim=latent_dim, num_components=components))
    with torch.no_grad():  # spread the components so that mixtures are not degenerate
        t.means_layer.bias.normal_(0, 1.0)
    parts = {
        "name": f"tiny-{condition}", "condition": condition, "classes": classes, "tokenizer": tokenizer,
        "generator": {"family": "dcgan", "config": gen_cfg, "weights": "generator.safetensors"},
        "condition_model": {**f_spec, "weights": "condition.safetensors"},
    }
    if image_features:
        from tr0n_rt.export.energy import AestheticHead

        t2 = TranslatorGMM(TranslatorConfig(cond_dim=f.cond_dim, latent_dim=latent_dim, num_components=components))
        with torch.no_grad():
            t2.means_layer.bias.normal_(0, 1.0)
        parts["image_translator"] = t2.save(folder, "image_translator")
        head = AestheticHead(f.cond_dim)
        save_state(head.state_dict(), folder / "aesthetic.safetensors")
        parts["aesthetic"] = {"weights": "aesthetic.safetensors"}
    write_pipeline(folder, parts, t, AugmentConfig(), SamplingConfig(steps=5, copies=4))
    return folder


@pytest.fixture(scope="session")
def tiny_text_pipeline(tmp_path_factory):
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny_text"), "text")


@pytest.fixture(scope="session")
def tiny_class_pipeline(tmp_path_factory):
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny_class"), "class")


def export_tiny(pipeline, folder, **options):
    """A copy of a tiny pipeline in folder, exported there, validated against torch at two inputs (a
    random tiny CLIP's gradient is too rough for the FP16 cosine bound: recorded, not enforced)."""
    import shutil
    import warnings

    from tr0n_rt.export.bundle_export import export_bundle

    shutil.copytree(pipeline, folder, dirs_exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.onnx's export chatter
        return export_bundle(folder, folder, validate=True, fp16_strict=False, **options)


@pytest.fixture(scope="session")
def text_bundle(tiny_text_pipeline, tmp_path_factory):
    """The tiny text pipeline as a bundle with FP16 variants, exported once per session. Read-only:
    a test that changes a bundle copies it first."""
    return export_tiny(tiny_text_pipeline, tmp_path_factory.mktemp("text_bundle"), fp16=True)


@pytest.fixture(scope="session")
def class_bundle(tiny_class_pipeline, tmp_path_factory):
    """The tiny class pipeline as a float32 bundle, exported once per session (read-only, as text_bundle)."""
    return export_tiny(tiny_class_pipeline, tmp_path_factory.mktemp("class_bundle"), fp16=False)
