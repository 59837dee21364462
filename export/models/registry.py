"""Name -> class registries, so a JSON config (family + config + weights) rebuilds any model."""
from __future__ import annotations

from tr0n_rt.errors import unknown_name

GENERATORS: dict[str, type] = {}
CONDITION_MODELS: dict[str, type] = {}


def registrar(table: dict[str, type], attribute: str = "family"):
    """A class decorator factory: @register("name") stores the class in `table` under name and sets
    cls.<attribute> = name (generators, condition models, captioners)."""
    def register(name: str):
        def wrap(cls):
            setattr(cls, attribute, name)
            table[name] = cls
            return cls

        return wrap

    return register


register_generator = registrar(GENERATORS)
register_condition_model = registrar(CONDITION_MODELS)


def _load_families() -> None:
    # Importing the adapter modules fills the registries.
    from . import classifier, clip, dcgan  # noqa: F401
    from . import stylegan2  # noqa: F401
    from . import biggan  # noqa: F401
    from ..worlds import shapes  # noqa: F401


def build_generator(family: str, config: dict):
    _load_families()
    if family not in GENERATORS:
        raise unknown_name("generator family", family, GENERATORS)
    return GENERATORS[family](**config)


def build_condition_model(family: str, config: dict):
    _load_families()
    if family not in CONDITION_MODELS:
        raise unknown_name("condition model family", family, CONDITION_MODELS)
    return CONDITION_MODELS[family](**config)
