"""What a shipped ONNX file may not carry: the exporting machine's paths and Python stack traces.

torch.onnx records, per node, the stack trace and module path it was traced from (metadata_props
pkg.torch.onnx.*, doc_string) and the export's graph signature; none of it is needed to run the graph.
strip_build_metadata removes it all; build_leaks finds any left in a file (the bundle tests run it on
every shipped graph).
"""
from __future__ import annotations

from pathlib import Path

import onnx

# Text that gives away the build machine or a traceback.
LEAK_MARKERS = ('File "', "Traceback", "site-packages", "/home/", "/root/", "/tmp/", "/work/", "/Users/", ":\\",
                "pkg.torch")


def _graphs(model: onnx.ModelProto):
    """The main graph and every subgraph (If/Loop/Scan bodies), and the model's functions' nodes."""
    todo = [model.graph]
    while todo:
        g = todo.pop()
        yield g, g.node
        for node in g.node:
            for a in node.attribute:
                todo += ([a.g] if a.HasField("g") else []) + list(a.graphs)
    for f in model.functions:
        yield f, f.node


def strip_build_metadata(model: onnx.ModelProto) -> int:
    """Clears doc strings and metadata of the model, its graphs, nodes and functions, in place; returns how
    many fields held something."""
    cleared = int(bool(model.doc_string)) + len(model.metadata_props)
    model.doc_string = ""
    del model.metadata_props[:]
    for g, nodes in _graphs(model):
        cleared += int(bool(g.doc_string)) + len(g.metadata_props)
        g.doc_string = ""
        del g.metadata_props[:]
        for node in nodes:
            cleared += int(bool(node.doc_string)) + len(node.metadata_props)
            node.doc_string = ""
            del node.metadata_props[:]
        for values in ((g.input, g.output, g.value_info) if isinstance(g, onnx.GraphProto) else ()):
            for v in values:
                cleared += int(bool(v.doc_string)) + len(v.metadata_props)
                v.doc_string = ""
                del v.metadata_props[:]
    return cleared


def build_leaks(path: str | Path) -> list[str]:
    """Every text field of the ONNX file at path (names, doc strings, metadata, string attributes) that
    holds one of LEAK_MARKERS, as 'where: text' (the first 80 characters); [] when clean."""
    model = onnx.load(str(path), load_external_data=False)
    found = []

    def check(where: str, text: str) -> None:
        if any(m in text for m in LEAK_MARKERS):
            found.append(f"{where}: {text[:80]!r}")

    check("model.doc_string", model.doc_string)
    check("model.producer", model.producer_name)
    for p in model.metadata_props:
        check("model.metadata", f"{p.key}={p.value}")
    for g, nodes in _graphs(model):
        check(f"{g.name}.doc_string", g.doc_string)
        for p in g.metadata_props:
            check(f"{g.name}.metadata", f"{p.key}={p.value}")
        for node in nodes:
            check(f"node {node.name}", node.name + " " + node.doc_string)
            for p in node.metadata_props:
                check(f"node {node.name} metadata", f"{p.key}={p.value}")
            for a in node.attribute:
                for s in ([a.s] if a.s else []) + list(a.strings):
                    check(f"node {node.name} attribute {a.name}", s.decode("utf-8", "replace"))
    return found
