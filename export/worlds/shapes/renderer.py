"""G of the shapes world: a differentiable procedural renderer, z in R^20 -> one soft-edged shape.

Layout of z (each coordinate ~ N(0, 1); any z gives a valid picture):
    z[0:5]    shape logits       (circle, square, triangle, star, cross)   softmax(z / tau)
    z[5:11]   colour logits      (red, green, blue, yellow, purple, orange) softmax(z / tau)
    z[11:14]  background logits  (white, black, gray)                       softmax(z / tau)
    z[14:16]  centre x, y        CENTER_RANGE * tanh(0.8 z)            (tanh(0.8 z) ~ uniform on (-1, 1))
    z[16]     radius             lo + (hi - lo) * sigmoid(1.6 z)
    z[17]     rotation angle     2 z radians                           (periodic, so no squashing needed)
    z[18]     object shade       tanh(0.8 z): mix towards white (> 0) or black (< 0)
    z[19]     background shade   the same, for the background

Each shape is a signed distance in the shape's local frame (radius 1): a circle, or a union (min) of
convex polygons, each the intersection (max) of its edge half-planes. Pixels are covered with
sigmoid(-distance_px / edge), and the five coverages, six colours and three backgrounds are blended by
their softmax weights. Only matmul, elementwise math, softmax, sum and max/min reductions: exports to ONNX.
"""
from __future__ import annotations

import math

import torch

from ...models.base import Generator, LatentSpec
from . import data

LATENT_DIM = 20
SHAPE_SLICE, COLOUR_SLICE, BACKGROUND_SLICE = slice(0, 5), slice(5, 11), slice(11, 14)
CENTER_X, CENTER_Y, RADIUS, ANGLE, SHADE, BACKGROUND_SHADE = 14, 15, 16, 17, 18, 19


def _convex_pieces() -> tuple[list[list[tuple[float, float]]], list[tuple[int, int]]]:
    """Convex counter-clockwise polygons whose unions make the four polygonal shapes, and for each of
    data.SHAPES[1:] the range [start, stop) of its pieces."""
    star = data.SHAPE_POLYGONS["star"]
    n = len(star)
    kites = [[(0.0, 0.0), star[(k - 1) % n], star[k], star[(k + 1) % n]] for k in range(0, n, 2)]
    w = data.CROSS_HALF_WIDTH
    bars = [[(-1.0, -w), (1.0, -w), (1.0, w), (-1.0, w)], [(-w, -1.0), (w, -1.0), (w, 1.0), (-w, 1.0)]]
    groups = [[data.SHAPE_POLYGONS["square"]], [data.SHAPE_POLYGONS["triangle"]], kites, bars]
    pieces, ranges = [], []
    for g in groups:
        ranges.append((len(pieces), len(pieces) + len(g)))
        pieces += g
    return pieces, ranges


def _half_planes(pieces, edges_per_piece: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> normals [P * E, 2], offsets [P * E]: n . p - d > 0 outside the edge. Pieces with fewer edges
    repeat their last edge (max over a repeated plane changes nothing)."""
    normals, offsets = [], []
    for poly in pieces:
        planes = []
        for i, (x0, y0) in enumerate(poly):
            x1, y1 = poly[(i + 1) % len(poly)]
            dx, dy = x1 - x0, y1 - y0
            norm = math.hypot(dx, dy)
            nx, ny = dy / norm, -dx / norm  # outward for a counter-clockwise polygon
            planes.append((nx, ny, nx * x0 + ny * y0))
        planes += [planes[-1]] * (edges_per_piece - len(planes))
        normals += [(p[0], p[1]) for p in planes]
        offsets += [p[2] for p in planes]
    return torch.tensor(normals, dtype=torch.float32), torch.tensor(offsets, dtype=torch.float32)


class ShapesRenderer(Generator):
    """z [B, 20] -> images [B, 3, image_size, image_size] in [-1, 1]; no weights, nothing to train.

    tau:  softmax temperature of the shape / colour / background choices (low = nearly one-hot).
    edge: edge softness in pixels (logistic scale of the coverage).
    """

    family = "shapes_renderer"

    def __init__(self, tau: float = 0.2, image_size: int = 32, edge: float = 0.35):
        super().__init__()
        self.tau, self.image_size, self.edge = float(tau), int(image_size), float(edge)
        self.latent = LatentSpec(dim=LATENT_DIM)
        s = self.image_size
        coords = (torch.arange(s, dtype=torch.float32) + 0.5) * (2.0 / s) - 1.0
        gy, gx = torch.meshgrid(-coords, coords, indexing="ij")  # row 0 is the top: y = +1
        self.register_buffer("grid", torch.stack([gx, gy], -1).reshape(1, s * s, 2), persistent=False)
        pieces, self.piece_ranges = _convex_pieces()
        self.edges_per_piece = max(len(p) for p in pieces)
        normals, offsets = _half_planes(pieces, self.edges_per_piece)
        self.register_buffer("normals", normals.t().contiguous(), persistent=False)  # [2, P*E]
        self.register_buffer("offsets", offsets, persistent=False)                   # [P*E]
        self.register_buffer("colours", torch.tensor(list(data.COLOURS.values())), persistent=False)
        self.register_buffer("backgrounds", torch.tensor(list(data.BACKGROUNDS.values())), persistent=False)

    def config(self) -> dict:
        return {"tau": self.tau, "image_size": self.image_size, "edge": self.edge}

    def signed_distances(self, local: torch.Tensor) -> torch.Tensor:
        """local [B, N, 2] points in each shape's frame -> [B, N, 5] signed distances (< 0 inside),
        one per shape of data.SHAPES, in units of the shape radius."""
        b, n, _ = local.shape
        circle = torch.sqrt((local * local).sum(-1, keepdim=True) + 1e-8) - data.CIRCLE_RADIUS
        planes = local @ self.normals - self.offsets                        # [B, N, P*E]
        pieces = planes.reshape(b, n, -1, self.edges_per_piece).amax(-1)    # [B, N, P] convex pieces
        unions = [pieces[..., i:j].amin(-1, keepdim=True) for i, j in self.piece_ranges]
        return torch.cat([circle] + unions, -1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, s = z.shape[0], self.image_size
        w_shape = torch.softmax(z[:, SHAPE_SLICE] / self.tau, -1)            # [B, 5]
        w_colour = torch.softmax(z[:, COLOUR_SLICE] / self.tau, -1)          # [B, 6]
        w_back = torch.softmax(z[:, BACKGROUND_SLICE] / self.tau, -1)        # [B, 3]

        center = data.CENTER_RANGE * torch.tanh(0.8 * z[:, CENTER_X:CENTER_Y + 1])  # [B, 2]
        lo, hi = data.RADIUS_RANGE
        radius = lo + (hi - lo) * torch.sigmoid(1.6 * z[:, RADIUS:RADIUS + 1])      # [B, 1]
        angle = 2.0 * z[:, ANGLE:ANGLE + 1]
        cos, sin = torch.cos(angle), torch.sin(angle)                               # [B, 1]

        # local = R(-angle) (p - center) / radius, for every pixel p: [B, S*S, 2]
        d = self.grid - center[:, None, :]
        dx, dy = d[..., 0], d[..., 1]
        local = torch.stack([cos * dx + sin * dy, cos * dy - sin * dx], -1) / radius[:, :, None]

        dist_px = self.signed_distances(local) * (radius[:, :, None] * (s / 2))     # [B, S*S, 5]
        cover = torch.sigmoid(-dist_px / self.edge)
        alpha = (cover * w_shape[:, None, :]).sum(-1, keepdim=True)                 # [B, S*S, 1]

        fg = _shade(w_colour @ self.colours, torch.tanh(0.8 * z[:, SHADE:SHADE + 1]), data.SHADE_RANGE)
        bg = _shade(w_back @ self.backgrounds, torch.tanh(0.8 * z[:, BACKGROUND_SHADE:BACKGROUND_SHADE + 1]),
                    data.BACKGROUND_SHADE_RANGE)                                    # [B, 3] in [0, 1]
        img = bg[:, None, :] + alpha * (fg - bg)[:, None, :]                        # [B, S*S, 3]
        return (img * 2.0 - 1.0).transpose(1, 2).reshape(b, 3, s, s)


def _shade(rgb: torch.Tensor, t: torch.Tensor, strength: float) -> torch.Tensor:
    """rgb [B, 3], t [B, 1] in (-1, 1): mix up to `strength` towards white (t > 0) or black (t < 0),
    as data.shaded does."""
    a = strength * t
    # = rgb + relu(a) (1 - rgb) - relu(-a) rgb, written with abs so that the gradient at a = 0 is not 0
    return (1.0 - a.abs()) * rgb + 0.5 * (a.abs() + a)


def latent_for(shape: str, colour: str, background: str = "white", margin: float = 4.0,
               **rest: float) -> torch.Tensor:
    """A z [20] that draws the named attributes: the chosen logit at +margin, the others 0.
    `rest` sets any of cx, cy, radius, angle, shade, background_shade as raw z coordinates."""
    z = torch.zeros(LATENT_DIM)
    z[SHAPE_SLICE.start + data.SHAPES.index(shape)] = margin
    z[COLOUR_SLICE.start + data.COLOUR_NAMES.index(colour)] = margin
    z[BACKGROUND_SLICE.start + data.BACKGROUND_NAMES.index(background)] = margin
    index = {"cx": CENTER_X, "cy": CENTER_Y, "radius": RADIUS, "angle": ANGLE, "shade": SHADE,
             "background_shade": BACKGROUND_SHADE}
    for k, v in rest.items():
        z[index[k]] = v
    return z
