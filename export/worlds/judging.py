"""What every world's judge shares: loading its network from a pipeline's `judge` spec."""
from __future__ import annotations

from pathlib import Path

from tr0n_rt.errors import ConfigError

from ..checkpoints import load_weights


class WorldJudge:
    """A judge wraps one trained network (`net_class`) and turns its outputs into verdicts."""

    family: str = ""
    net_class: type

    def __init__(self, net):
        self.net = net.eval()

    @classmethod
    def load(cls, spec: dict, folder: Path):
        """spec: a pipeline's {"family": ..., "config": {...}, "weights": "judge.safetensors"}."""
        if spec.get("family") != cls.family:
            raise ConfigError(f"judge family {spec.get('family')!r} is not {cls.family!r}")
        net = cls.net_class(**spec.get("config", {}))
        load_weights(net, Path(folder) / spec["weights"])
        return cls(net)
