"""The public API: load the built pipeline artifacts in one call, route prompts, generate.

    from ais.api import load
    system = load()                       # params.yaml + data/model + data/map
    system.route("Summarise this: ...")   # category, neighbours, similarities, skip plan
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ais.decoder import RoutedDecoder
from ais.model import load_model
from ais.params import get, load_params
from ais.plan import SkipSettings
from ais.topomap import TopoMap


@dataclass
class System:
    """The model, its tokenizer, the map and the routed decoder, as `dvc repro` built them."""

    model: object
    tokenizer: object
    topo: TopoMap
    decoder: RoutedDecoder
    params: dict


def load(params_path: str | Path = "params.yaml", root: str | Path = ".", **overrides) -> System:
    """Load model and map with the settings in params.yaml (`overrides` replace top-level keys
    of the `skip` section, e.g. mode='soft')."""
    root = Path(root)
    params = load_params(Path(root) / params_path if not Path(params_path).is_absolute() else params_path)
    params.setdefault("skip", {}).update(overrides)
    settings = SkipSettings.from_params(params)
    model, tokenizer = load_model(root / "data/model", get(params, "model.dtype", str), get(params, "model.device", str))
    from ais.model import model_identity

    topo = TopoMap.load(root / "data/map", model_identity(model))
    k = get(params, "router.k", int, lo=1, hi=len(topo))
    router = get(params, "router.kind", str, choices=("knn", "learned"))
    return System(model, tokenizer, topo, RoutedDecoder(model, topo, settings, k, router), params)
