"""sklearn's bundled 8x8 digits (1,797 images, no download), upsampled to image_size and mapped to [-1, 1]."""
from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGE_SIZE = 32
CLASSES = [str(i) for i in range(10)]


def load_split(image_size: int = IMAGE_SIZE, test_fraction: float = 0.2, seed: int = 0):
    """-> (x_train [N, 1, S, S] in [-1, 1], y_train [N] int64, x_test, y_test); stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [1797, 1, 8, 8] in [0, 1]
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 2 - 1).contiguous()
    y = torch.tensor(digits.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=test_fraction, random_state=seed, stratify=y.numpy()
    )
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translates each image of x [N, C, H, W] by integer offsets in [-max_shift, max_shift], filling with -1."""
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    m = max_shift
    padded = F.pad(x, (m, m, m, m), value=-1.0)  # [N, C, H + 2m, W + 2m]
    dy = torch.randint(0, 2 * m + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * m + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)).view(n, 1, h, 1).expand(n, c, h, w + 2 * m)
    cols = (dx[:, None] + torch.arange(w)).view(n, 1, 1, w).expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)
