"""pipeline.json, a pipeline folder's description of its parts (format "tr0n-rt.pipeline", version 1; written by
export/pipeline.py write_pipeline, export/create.py and the world builds), read as untrusted input.

read_pipeline_json is the one reader of it: a regular file of at most PIPELINE_MAX_BYTES (a FIFO never blocks;
deep nesting, 5000-digit numbers and bad UTF-8 are typed errors: tr0n_rt.bundle.read_json_file), its format
and version, then tr0n_rt/schemas/pipeline.schema.json (JSON Schema draft 2020-12: the parts it describes are
closed and bounded, the top level is open to the records tools add). Every problem is a ConfigError naming the
field by its JSON path, the value cut short, and what to do. Torch-free: the runtime reads it for a judge
(judge.open_judge), the exporter for everything else.
"""
from __future__ import annotations

from pathlib import Path

from .jsonfile import read_json_file, schema_problems, shown
from .errors import ConfigError

FORMAT, VERSION = "tr0n-rt.pipeline", 1
PIPELINE_MAX_BYTES = 16 << 20  # the embedded worlds' are ~3 KB
FIX = "correct it, re-create the pipeline (`tr0n-rt create`) or restore pipeline.json from a copy"


def read_pipeline_json(folder: str | Path) -> dict:
    """folder/pipeline.json as a dict, read safely and checked against its schema; ConfigError otherwise
    (e.g. "pipeline.json: field 'translator.config.cond_dim' is '64', expected int"). A missing file is a
    ConfigError too: callers that allow a folder without one check for it first."""
    path = Path(folder) / "pipeline.json"
    spec = read_json_file(path, PIPELINE_MAX_BYTES, ConfigError, FIX)
    if not isinstance(spec, dict):
        raise ConfigError(f"{path} is {shown(spec)}, not a JSON object; {FIX}")
    if spec.get("format") != FORMAT or spec.get("version") != VERSION:
        raise ConfigError(f"{path}: format {shown(spec.get('format'))} v{shown(spec.get('version'))} is not "
                          f"{FORMAT!r} v{VERSION}; rebuild it with this version of tr0n-rt")
    problems = schema_problems("pipeline", spec)
    if problems:
        raise ConfigError(f"{path}: {'; '.join(problems)}. {FIX[0].upper()}{FIX[1:]}")
    return spec
