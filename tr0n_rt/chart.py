"""Bar charts of benchmark results as images (Pillow only, no matplotlib): `tr0n-rt bench --png` and
benchmarks/chart.py draw with these."""
from __future__ import annotations

COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]


def font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def bar_panel(title: str, unit: str, groups: list[str], series: dict[str, list[float | None]],
              plot_width: int = 540, height: int = 340):
    """Grouped bars: one group per entry of `groups`, one bar per series; missing values are skipped.
    The legend's width follows the longest series name."""
    from PIL import Image, ImageDraw

    left, top, bottom = 60, 34, 40
    right = 40 + 7 * max((len(n) for n in series), default=0)
    w, h = left + plot_width + right, height
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.text((left, 8), title, fill="black", font=font(15))
    values = [v for vs in series.values() for v in vs if v is not None]
    tick, ticks = nice_ticks(max(values, default=0.0) * 1.1)
    vmax = tick * ticks
    plot_w, plot_h = w - left - right, h - top - bottom
    d.line([(left, top), (left, h - bottom), (w - right, h - bottom)], fill="black")
    for i in range(ticks + 1):  # value grid
        y = h - bottom - plot_h * i / ticks
        d.line([(left - 4, y), (w - right, y)], fill="#dddddd" if i else "black")
        d.text((4, y - 6), number(tick * i), fill="black", font=font(11))
    d.text((4, 12), unit, fill="black", font=font(11))
    n = max(len(series), 1)
    slot = plot_w / max(len(groups), 1)
    bar = slot * 0.8 / n
    for gi, group in enumerate(groups):
        x0 = left + gi * slot + slot * 0.1
        for si, (_, vs) in enumerate(series.items()):
            v = vs[gi] if gi < len(vs) else None
            if v is None:
                continue
            x = x0 + si * bar
            y = h - bottom - plot_h * v / vmax
            d.rectangle([x, y, x + bar - 2, h - bottom], fill=COLORS[si % len(COLORS)])
            d.text((x, y - 13), number(v), fill="black", font=font(10))
        d.text((x0 + slot * 0.3, h - bottom + 8), group, fill="black", font=font(12))
    for si, name in enumerate(series):  # legend
        y = top + 6 + si * 18
        d.rectangle([w - right + 10, y, w - right + 22, y + 12], fill=COLORS[si % len(COLORS)])
        d.text((w - right + 28, y - 1), name, fill="black", font=font(12))
    return img


def number(v: float) -> str:
    """3 significant digits, without exponents below a million: 0.0123, 4.56, 789, 13,655."""
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def nice_ticks(top: float) -> tuple[float, int]:
    """(tick step, number of ticks) with a step of 1, 2 or 5 x 10^k and 3-6 ticks covering [0, top]."""
    import math

    if top <= 0:
        return 1.0, 1
    step = 10 ** math.floor(math.log10(top / 5))
    for m in (1, 2, 5, 10):
        if top / (m * step) <= 6:
            step *= m
            break
    return step, max(1, math.ceil(top / step - 1e-9))


def stack(panels: list, title: str):
    from PIL import Image, ImageDraw

    w = max(p.width for p in panels)
    sheet = Image.new("RGB", (w, 30 + sum(p.height for p in panels)), "white")
    ImageDraw.Draw(sheet).text((10, 8), title, fill="black", font=font(16))
    y = 30
    for p in panels:
        sheet.paste(p, (0, y))
        y += p.height
    return sheet


