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
    _lossless: object = None

    def lossless_model(self):
        """The model in `lossless.dtype` (float32 by default): in bfloat16, verifying several
        tokens in one forward rounds differently from one-token steps and the greedy tokens can
        differ, so exactness is only claimed at this dtype. Loaded once, only if it differs."""
        dtype = get(self.params, "lossless.dtype", str)
        from ais.model import pick_dtype

        if pick_dtype(dtype, self.model.device) == self.model.dtype:
            return self.model
        if self._lossless is None:
            self._lossless = load_model(Path(self.params["_root"]) / "data/model", dtype, str(self.model.device))[0]
        return self._lossless


def load(params_path: str | Path = "params.yaml", root: str | Path = ".", dtype: str | None = None,
         **overrides) -> System:
    """Load model and map with the settings in params.yaml (`dtype` replaces model.dtype;
    `overrides` replace keys of the `skip` section, e.g. mode='soft')."""
    root = Path(root)
    params = load_params(Path(root) / params_path if not Path(params_path).is_absolute() else params_path)
    params.setdefault("skip", {}).update(overrides)
    params["_root"] = str(root)
    settings = SkipSettings.from_params(params)
    model, tokenizer = load_model(root / "data/model", dtype or get(params, "model.dtype", str),
                                  get(params, "model.device", str))
    from ais.model import model_identity

    topo = TopoMap.load(root / "data/map", model_identity(model))
    k = get(params, "router.k", int, lo=1, hi=len(topo))
    router = get(params, "router.kind", str, choices=("knn", "learned"))
    return System(model, tokenizer, topo, RoutedDecoder(model, topo, settings, k, router), params)


MODES = ("full", "hard", "soft", "lossless")


@dataclass
class Generation:
    """A reply and what produced it."""

    text: str
    mode: str
    category: str
    skipped_layers: list[int]
    plan: str
    seconds: float
    new_tokens: int
    drafter: str | None = None
    mean_accepted: float | None = None


def _route(system: System, prompt: str):
    from ais.decode import check_prompt

    return system.decoder.route_prompts(system.tokenizer, [check_prompt(prompt)])[0]


def route(system: System, prompt: str) -> dict:
    """Where a prompt goes: category, nearest map entries with similarities, and its skip plan."""
    r = _route(system, prompt)
    return {"category": r.category, "router": system.decoder.router, "neighbours": r.neighbours,
            "neighbour_categories": [system.topo.categories[int(system.topo.labels[i])] for i in r.neighbours],
            "similarities": r.similarities, "plan": r.plan.describe(), "skipped_layers": r.plan.layers}


def generate(system: System, prompt: str, mode: str = "hard", max_new_tokens: int = 64) -> Generation:
    """Greedy reply under `mode`: full (no skip), hard / soft (the routed plan), lossless
    (speculative decoding with the category's drafter; identical tokens to full)."""
    import time

    from ais.benchmark import synchronize
    from ais.decode import check_prompt, context_length, encode_prompts, generate_ids
    from ais.lossless import make_drafter, prompt_ids
    from ais.plan import make_plan
    from ais.skip import NO_SKIP
    from ais.speculative import speculative_generate

    if mode not in MODES:
        raise ValueError(f"mode={mode!r} must be one of {', '.join(MODES)}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be a positive integer")
    prompt = check_prompt(prompt)
    model, tok = system.model, system.tokenizer
    synchronize(model.device)
    start = time.perf_counter()
    r = _route(system, prompt)
    drafter_name, mean_accepted = None, None
    if mode == "lossless":
        drafter_name = _drafters(system).get(r.category, "none")
        draft_plan = system.decoder.plan_for(r.category, float(system.params["lossless"]["draft_fraction"]), mode="hard")
        drafter = make_drafter(drafter_name, draft_plan, float(system.params["lossless"]["confidence"]),
                               int(system.params["lossless"]["ngram"]))
        ids = prompt_ids(tok, prompt, context_length(model) - max_new_tokens - 8)
        new, stats = speculative_generate(system.lossless_model(), ids, max_new_tokens, drafter, int(system.params["lossless"]["gamma"]),
                                          eos_token_id=tok.eos_token_id)
        mean_accepted, plan = stats.mean_accepted, NO_SKIP
    else:
        plan = NO_SKIP if mode == "full" else make_plan(r.plan.layers, mode, system.decoder.settings.alpha)
        batch = encode_prompts(tok, [prompt], model.device, context_length(model) - max_new_tokens)
        new = generate_ids(model, batch, plan, max_new_tokens, eos_token_id=tok.eos_token_id)[0].tolist()
    synchronize(model.device)
    seconds = time.perf_counter() - start
    if tok.eos_token_id in new:  # rows that ended are padded after their end-of-sequence token
        new = new[:new.index(tok.eos_token_id) + 1]
    return Generation(tok.decode(new, skip_special_tokens=True), mode, r.category,
                      plan.layers if mode in ("hard", "soft") else [], plan.describe() if mode != "lossless"
                      else f"verify with all layers; drafter {drafter_name}", seconds, len(new), drafter_name, mean_accepted)


def _drafters(system: System) -> dict:
    import json

    path = Path(system.params.get("_root", ".")) / "data/drafters.json"
    return json.loads(path.read_text()) if path.is_file() else {}
