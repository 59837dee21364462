"""The shapes world's aesthetic head: a stand-in for LAION's linear aesthetic predictor, with a taste
that can be checked. It scores an image's CLIP embedding by how large its shape is: a linear head
w . e + b fitted by ridge regression on procedural images (never G's) to the standardised radius.

So the energy's aesthetic term (alpha > 0) should push samples towards larger shapes while the
similarity term keeps shape and colour, which tests/test_image_features.py checks with G's own radius.
"""
from __future__ import annotations

import numpy as np
import torch

from ...energy import AestheticHead
from . import data


@torch.no_grad()
def fit_size_head(condition_model, n: int = 4000, seed: int = 4242, ridge: float = 1e-2) -> tuple[AestheticHead, dict]:
    """-> the head, and its fit: R^2 on held-out images and the radius mean/std it standardises by."""
    rng = np.random.default_rng(seed)
    attrs = data.sample_attributes(2 * n, rng)
    e = torch.cat([condition_model.encode_images(data.render(attrs[i:i + 500])) for i in range(0, 2 * n, 500)])
    r = torch.tensor([a.radius for a in attrs], dtype=torch.float64)
    mean, std = r[:n].mean(), r[:n].std()
    y = (r - mean) / std
    x = torch.cat([e.double(), torch.ones(2 * n, 1, dtype=torch.float64)], 1)  # [2n, d + 1], bias last
    xt, yt = x[:n], y[:n]
    reg = ridge * torch.eye(x.shape[1], dtype=torch.float64)
    reg[-1, -1] = 0  # no penalty on the bias
    w = torch.linalg.solve(xt.T @ xt + reg, xt.T @ yt)
    pred = x[n:] @ w
    r2 = 1 - ((pred - y[n:]) ** 2).sum() / ((y[n:] - y[n:].mean()) ** 2).sum()
    head = AestheticHead(e.shape[1])
    head.weight.copy_(w[:-1].float()[None])
    head.bias.copy_(w[-1:].float())
    return head.eval(), {"heldout_r2": round(float(r2), 4), "radius_mean": float(mean), "radius_std": float(std),
                         "n": n, "ridge": ridge, "seed": seed}
