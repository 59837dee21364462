"""The translator: mixture density, translator-only sample, persistence, reference checkpoints."""
import math

import pytest
import torch
from torch import nn

from tr0n_rt.errors import CheckpointError, ShapeError
from tr0n_rt.export.translator import TranslatorConfig, TranslatorGMM, import_reference_checkpoint


def make(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = TranslatorConfig(**{"cond_dim": 6, "latent_dim": 5, "num_components": 4, **kw})
    t = TranslatorGMM(cfg)
    with torch.no_grad():
        t.log_std.uniform_(-1.0, 0.5)  # unequal stds, so a wrong density formula shows
    return t


def test_log_prob_matches_torch_distributions():
    t = make()
    c, z = torch.randn(7, 6), torch.randn(7, 5)
    out = t(c)
    mix = torch.distributions.Categorical(logits=out["logits"])
    comp = torch.distributions.Independent(
        torch.distributions.Normal(out["means"], out["std"].expand_as(out["means"])), 1)
    expected = torch.distributions.MixtureSameFamily(mix, comp).log_prob(z)
    torch.testing.assert_close(t.log_prob(z, c), expected, rtol=1e-5, atol=1e-5)


def test_log_prob_of_one_component_is_a_gaussian_density():
    t = make(num_components=1)
    c, z = torch.randn(3, 6), torch.randn(3, 5)
    out = t(c)
    s = out["std"]
    direct = (-0.5 * ((z - out["means"][:, 0]) / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi)).sum(1)
    torch.testing.assert_close(t.log_prob(z, c), direct)


def test_mode_is_the_most_probable_mean():
    t = make()
    c = torch.randn(5, 6)
    out = t(c)
    best = out["logits"].argmax(1)
    for b in range(5):
        torch.testing.assert_close(t.mode(c)[b], out["means"][b, best[b]])


def test_bounded_means_stay_in_bounds():
    t = make(mean_bound=2.0)
    with torch.no_grad():
        t.means_layer.weight.mul_(100)
    m = t(torch.randn(4, 6))["means"]
    assert m.abs().max() <= 2.0 and m.abs().max() > 1.5


def test_wrong_condition_shape_is_refused():
    with pytest.raises(ShapeError, match=r"expected \[batch, 6\]"):
        make()(torch.randn(2, 7))


def test_save_and_load_round_trip(tmp_path):
    t = make(extra_dim=3)
    t.save(tmp_path)
    loaded = TranslatorGMM.load(tmp_path)
    c = torch.randn(2, 6)
    for k, v in t(c).items():
        torch.testing.assert_close(loaded(c)[k], v)


# --- reference-code checkpoints (github.com/layer6ai-labs/tr0n, modules/models/model_*.py) --------
class ReferenceStyleTranslator(nn.Module):
    """A re-statement of the reference Translator's layout and forward (StyleGAN2 names `w_*`,
    BigGAN/NVAE names `z_*` + `y_layer`), to produce checkpoints the way the reference does."""

    def __init__(self, d_c, d_z, k, prefix="w", thresh=None, y_dim=0):
        super().__init__()
        self.k, self.d_z, self.prefix, self.thresh = k, d_z, prefix, thresh
        self.shared1 = nn.Linear(d_c, 4 * d_c)
        self.shared2 = nn.Linear(4 * d_c, 4 * d_c)
        setattr(self, f"{prefix}_layer", nn.Linear(4 * d_c, k * d_z))
        setattr(self, f"{prefix}_mixture_logits", nn.Linear(4 * d_c, k))
        setattr(self, f"{prefix}_log_stds", nn.Parameter(torch.log(torch.ones(1, 1, d_z) * 0.01)))
        self.y_layer = nn.Linear(4 * d_c, y_dim) if y_dim else None

    def forward(self, c):
        x = torch.relu(self.shared1(c))
        x = x + torch.relu(self.shared2(x))
        w = getattr(self, f"{self.prefix}_layer")(x)
        if self.thresh:
            w = self.thresh * torch.tanh(w)
        logits = getattr(self, f"{self.prefix}_mixture_logits")(x)
        stds = getattr(self, f"{self.prefix}_log_stds").exp() + 1e-6
        y = self.y_layer(x) if self.y_layer is not None else None
        return logits, w.reshape(c.shape[0], self.k, self.d_z), stds.reshape(-1), y


@pytest.mark.parametrize("prefix,thresh,y_dim", [("w", None, 0), ("z", 2.0, 7)])
def test_reference_checkpoint_gives_identical_outputs(tmp_path, prefix, thresh, y_dim):
    torch.manual_seed(1)
    ref = ReferenceStyleTranslator(6, 5, 10, prefix, thresh, y_dim)
    with torch.no_grad():
        getattr(ref, f"{prefix}_log_stds").normal_(-3, 0.3)
    path = tmp_path / "model_best.pth"
    torch.save({"translator_state_dict": ref.state_dict()}, path)
    ours = import_reference_checkpoint(path, mean_bound=thresh)
    for seed in (0, 1):  # two different inputs
        c = torch.randn(3, 6, generator=torch.Generator().manual_seed(seed))
        logits, means, std, y = ref(c)
        out = ours(c)
        torch.testing.assert_close(out["logits"], logits)
        torch.testing.assert_close(out["means"], means)
        torch.testing.assert_close(out["std"], std)
        if y_dim:
            torch.testing.assert_close(out["extra"], y)


def test_foreign_checkpoint_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(CheckpointError, match="not a TR0N reference translator"):
        import_reference_checkpoint(path)


def test_truncated_checkpoint_is_refused(tmp_path):
    t = make()
    t.save(tmp_path)
    f = tmp_path / "translator.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        TranslatorGMM.load(tmp_path)


class Hostile:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /tmp/tr0n_pwned",))


def test_pickle_with_code_is_never_executed(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"translator_state_dict": Hostile()}, path)
    with pytest.raises(CheckpointError):
        import_reference_checkpoint(path)
    import os

    assert not os.path.exists("/tmp/tr0n_pwned")
