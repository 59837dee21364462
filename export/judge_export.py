"""A world's judge as a bundle file: judge.onnx and the manifest entry that tr0n_rt/judge.py reads.

The judge is a plain CNN, so it is exported as it is (no autograd tracing), with a dynamic batch, and
validated against torch at two random inputs before it replaces any judge.onnx already there.
The manifest entry (documented in tr0n_rt/judge.py) comes from the world judge's own runtime_spec(),
so the world code stays the one place that knows how a prompt names what the judge sees.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.export import Dim

from tr0n_rt.atomic import atomic_path
from tr0n_rt.errors import ConfigError
from tr0n_rt.pipeline_json import read_pipeline_json

from .clean import strip_build_metadata
from .validate import FP32_RTOL, ValidationError, rel_err
from .worlds import judge_from_spec

JUDGE_FILE = "judge.onnx"
INPUT = "images"
OPSET = 18
CASES = ((21, 2), (22, 5))  # (seed, batch): two different inputs and batch sizes


class JudgeGraph(nn.Module):
    """images [N, C, S, S] in [-1, 1] -> one probability tensor [N, n_values] per head, in `heads` order."""

    def __init__(self, net: nn.Module, heads: list[str]):
        super().__init__()
        self.net, self.heads = net.eval(), list(heads)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.net(images)
        if isinstance(logits, torch.Tensor):  # a single-head judge (digits) returns its logits bare
            logits = {self.heads[0]: logits}
        return tuple(logits[k].softmax(-1) for k in self.heads)


def export_judge(pipeline_dir: str | os.PathLike, out_dir: str | os.PathLike) -> tuple[str, dict]:
    """Writes out_dir/judge.onnx for the judge named in pipeline_dir/pipeline.json.

    -> (file name, manifest entry {"file", "family", "heads", "input", "rule", "validation"}).
    Raises ConfigError if the pipeline has no judge, ValidationError if ONNX and torch disagree.
    """
    pipeline_dir, out = Path(pipeline_dir), Path(out_dir)
    spec = read_pipeline_json(pipeline_dir).get("judge")
    if not spec:
        raise ConfigError(f"{pipeline_dir / 'pipeline.json'} names no judge: nothing to export")
    judge = judge_from_spec(spec, pipeline_dir)
    entry = {"file": JUDGE_FILE, "family": spec["family"], **judge.runtime_spec()}
    heads, c, s = list(entry["heads"]), entry["input"]["channels"], entry["input"]["size"]
    graph = JudgeGraph(judge.net, heads).eval()
    with atomic_path(out / JUDGE_FILE) as tmp:
        example = (torch.zeros(2, c, s, s),)
        batch = Dim("batch", min=1, max=4096)
        torch.onnx.export(graph, example, str(tmp), dynamo=True, dynamic_shapes=({0: batch},),
                          opset_version=OPSET, input_names=[INPUT], output_names=heads, external_data=False,
                          verbose=False)
        model = onnx.load(str(tmp))
        strip_build_metadata(model)  # build paths and stack traces stay on the build machine
        onnx.save(model, str(tmp))
        onnx.checker.check_model(model)
        max_err = validate_judge(graph, tmp, entry)
    entry["validation"] = {"max_rel_err": max_err, "tolerance": FP32_RTOL}
    return JUDGE_FILE, entry


def validate_judge(graph: JudgeGraph, path: Path, entry: dict) -> float:
    """Every head's probabilities from ONNX Runtime (CPU) against torch at two random inputs; the largest
    relative error (||onnx - torch|| / ||torch||). Also checks each head's width against its value names."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    c, s = entry["input"]["channels"], entry["input"]["size"]
    worst = 0.0
    for seed, batch in CASES:
        x = torch.rand(batch, c, s, s, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        with torch.no_grad():
            want = [t.numpy() for t in graph(x)]
        got = session.run(graph.heads, {INPUT: x.numpy()})
        for head, w, g in zip(graph.heads, want, got):
            n = len(entry["heads"][head])
            if g.shape != (batch, n):
                raise ValidationError(f"judge head {head!r} gives shape {g.shape}, expected ({batch}, {n}): "
                                      "the judge's runtime_spec() does not match its network")
            err = rel_err(g, w)
            if not np.isfinite(err) or err > FP32_RTOL:
                raise ValidationError(f"judge.onnx head {head!r} differs from torch by relative error {err:.2e} "
                                      f"(tolerance {FP32_RTOL:.0e}) at batch {batch}; the export is wrong")
            worst = max(worst, err)
    return worst
