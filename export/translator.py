"""TR0N's translator: an MLP from a condition c to a Gaussian mixture over the generator's latent z.

    h = ReLU(W1 c)                      width 4 * d_c
    h = h + ReLU(W2 h)                  residual
    means  = W_mu h -> [B, K, d_z]      (bounded: b * tanh(.), BigGAN b = 2)
    logits = W_pi h -> [B, K]
    std    = exp(log_std) + 1e-6        one learned [d_z] vector shared by all components, independent of c
    extra  = W_y h -> [B, d_y]          optional deterministic head (BigGAN's class embedding)

Training minimises alpha * mean_b -log q(z_b | c_b) (alpha = 1e-4 in the reference).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tr0n_rt.atomic import write_json
from tr0n_rt.errors import CheckpointError, ConfigError, ShapeError

from .checkpoints import load_state, load_weights, save_state

STD_EPS = 1e-6


@dataclass(frozen=True)
class TranslatorConfig:
    cond_dim: int  # d_c
    latent_dim: int  # d_z
    num_components: int = 10  # K
    hidden_mult: int = 4  # hidden width = hidden_mult * d_c
    mean_bound: float | None = None  # means = mean_bound * tanh(.) when set (BigGAN: 2.0)
    extra_dim: int = 0  # size of the deterministic extra head (BigGAN y: 128), 0 = none
    init_log_std: float = math.log(0.01)

    def __post_init__(self):
        for name in ("cond_dim", "latent_dim", "num_components", "hidden_mult"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"translator {name} must be >= 1, got {getattr(self, name)}")


class TranslatorGMM(nn.Module):
    def __init__(self, config: TranslatorConfig):
        super().__init__()
        self.config = config
        d_c, d_z, k = config.cond_dim, config.latent_dim, config.num_components
        hidden = config.hidden_mult * d_c
        self.shared1 = nn.Linear(d_c, hidden)
        self.shared2 = nn.Linear(hidden, hidden)
        self.means_layer = nn.Linear(hidden, k * d_z)
        self.logits_layer = nn.Linear(hidden, k)
        self.log_std = nn.Parameter(torch.full((d_z,), config.init_log_std))
        self.extra_layer = nn.Linear(hidden, config.extra_dim) if config.extra_dim else None

    def forward(self, c: torch.Tensor) -> dict[str, torch.Tensor]:
        """c [B, d_c] -> logits [B, K], means [B, K, d_z], std [d_z] (+ extra [B, d_y])."""
        cfg = self.config
        if c.ndim != 2 or c.shape[1] != cfg.cond_dim:
            raise ShapeError(f"condition has shape {tuple(c.shape)}, expected [batch, {cfg.cond_dim}]")
        h = F.relu(self.shared1(c))
        h = h + F.relu(self.shared2(h))
        means = self.means_layer(h)
        if cfg.mean_bound is not None:
            means = cfg.mean_bound * torch.tanh(means)
        out = {
            "logits": self.logits_layer(h),
            "means": means.reshape(c.shape[0], cfg.num_components, cfg.latent_dim),
            "std": self.log_std.exp() + STD_EPS,
        }
        if self.extra_layer is not None:
            out["extra"] = self.extra_layer(h)
        return out

    def log_prob(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """log q(z | c) [B] under the mixture: logsumexp_k(log_softmax(pi)_k + sum_d log N(z_d; mu_kd, s_d))."""
        out = self(c)
        return mixture_log_prob(z, out["logits"], out["means"], out["std"])

    def mode(self, c: torch.Tensor) -> torch.Tensor:
        """Translator-only sample: the mean of the most probable component, [B, d_z]."""
        out = self(c)
        best = out["logits"].argmax(dim=1)
        return out["means"][torch.arange(c.shape[0]), best]

    # --- persistence: safetensors + JSON config -------------------------------------------------
    def save(self, folder: str | Path, name: str = "translator") -> dict:
        """Writes <name>.safetensors and <name>.json into folder; returns the spec to put in a manifest."""
        folder = Path(folder)
        save_state(self.state_dict(), folder / f"{name}.safetensors")
        write_json(folder / f"{name}.json", asdict(self.config))
        return {"config": asdict(self.config), "weights": f"{name}.safetensors"}

    @classmethod
    def load(cls, folder: str | Path, name: str = "translator") -> "TranslatorGMM":
        folder = Path(folder)
        cfg_path = folder / f"{name}.json"
        if not cfg_path.is_file():
            raise CheckpointError(f"{cfg_path} does not exist: a translator is saved as {name}.json + {name}.safetensors")
        try:
            config = TranslatorConfig(**json.loads(cfg_path.read_text()))
        except (TypeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{cfg_path} is not a translator config: {e}") from None
        return load_weights(cls(config), folder / f"{name}.safetensors").eval()


def mixture_log_prob(z: torch.Tensor, logits: torch.Tensor, means: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """z [B, D], logits [B, K], means [B, K, D], std [D] -> log-density [B] (with the -D/2 log 2 pi term)."""
    diff = (z[:, None, :] - means) / std
    log_normal = -0.5 * diff.pow(2).sum(-1) - torch.log(std).sum() - 0.5 * z.shape[1] * math.log(2 * math.pi)
    return torch.logsumexp(F.log_softmax(logits, dim=1) + log_normal, dim=1)


# --- checkpoints trained with the reference code (github.com/layer6ai-labs/tr0n) ------------------
# The reference saves {"translator_state_dict": ...}; StyleGAN2 uses w_* names, BigGAN/NVAE z_* names,
# BigGAN adds y_layer. Its log-std parameter has shape [1, 1, d_z].
_REFERENCE_KEYS = {
    "shared1": "shared1",
    "shared2": "shared2",
    "layer": "means_layer",
    "mixture_logits": "logits_layer",
    "y_layer": "extra_layer",
}


def import_reference_checkpoint(path: str | Path, mean_bound: float | None = None) -> TranslatorGMM:
    """Builds a TranslatorGMM with identical outputs from a reference-code translator checkpoint.

    mean_bound: the reference's `z_thresh` (2.0 for BigGAN); it is not stored in the file.
    """
    raw = load_state(path)  # unwraps the reference's {"translator_state_dict": ...}
    prefix = next((p for p in ("w", "z") if f"{p}_log_stds" in raw), None)
    if prefix is None:
        raise CheckpointError(
            f"{path} is not a TR0N reference translator: no w_log_stds or z_log_stds key "
            f"(keys: {', '.join(sorted(raw)[:8])})"
        )
    state = {"log_std": raw[f"{prefix}_log_stds"].reshape(-1)}
    for key, value in raw.items():
        if key == f"{prefix}_log_stds":
            continue
        module, _, param = key.rpartition(".")
        if module.startswith(prefix + "_"):
            module = module[len(prefix) + 1:]
        if module not in _REFERENCE_KEYS:
            raise CheckpointError(f"{path}: unexpected key {key!r} for a TR0N reference translator")
        state[f"{_REFERENCE_KEYS[module]}.{param}"] = value
    hidden, cond_dim = state["shared1.weight"].shape
    k = state["logits_layer.weight"].shape[0]
    config = TranslatorConfig(
        cond_dim=cond_dim,
        latent_dim=state["log_std"].shape[0],
        num_components=k,
        hidden_mult=hidden // cond_dim,
        mean_bound=mean_bound,
        extra_dim=state["extra_layer.weight"].shape[0] if "extra_layer.weight" in state else 0,
    )
    model = TranslatorGMM(config)
    model.load_state_dict(state)
    return model.eval()
