"""The shapes world: one coloured shape on a plain background, small enough to show TR0N on a CPU in seconds.

    renderer.py  G, a differentiable procedural renderer (generator family "shapes_renderer")
    data.py      procedural training images (the world's style and hand-made ones), captions, prompt
                 parsing (independent of G)
    judge.py     a three-head CNN that checks an image against a prompt (never inside the energy)
    build.py     trains the tiny CLIP, adapts its image tower to hand-made styles, trains the judge:
                 build_models(out_dir) -> world spec dict
"""
from .judge import ShapesJudge
from .renderer import ShapesRenderer

__all__ = ["ShapesJudge", "ShapesRenderer"]
