"""The public API: load the built pipeline artifacts in one call, route prompts, generate.

    from ais.api import generate, load, route
    system = load()                                  # params.yaml + data/model + data/map
    route(system, "Summarise this: ...")             # category, neighbours, similarities, skip plan
    generate(system, "What is 12 plus 30?")          # in skip.mode; or mode="full" | "hard" | "soft" | "lossless"
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ais.decoding.routed import Route, RoutedDecoder
from ais.decoding.speculative import make_drafter, speculative_generate
from ais.device import dtype_name, pick_dtype, synchronize
from ais.model.loading import load_model, model_identity
from ais.model.prompts import chat_ids, check_prompt, context_length, encode_prompts
from ais.params import get, load_params
from ais.routing.embedding import router_embedding
from ais.routing.plans import SkipSettings
from ais.routing.topomap import TopoMap

MODES = ("full", "hard", "soft", "lossless")


@dataclass
class System:
    """The model, its tokenizer, the map and the routed decoder, as `dvc repro` built them."""

    model: object
    tokenizer: object
    topo: TopoMap
    decoder: RoutedDecoder
    params: dict
    root: Path
    _lossless: object = None

    def lossless_model(self):
        """The model in `lossless.dtype` (`auto`: the model's default dtype, bfloat16 where the
        device computes it natively; `float32` is the strict mode: in bfloat16 a several-token
        verify rounds differently from one-token steps, so a greedy token can flip at a near-tie).
        Loaded once, only if it differs from the main model's."""
        dtype = get(self.params, "lossless.dtype")
        if pick_dtype(dtype, self.model.device) == self.model.dtype:
            return self.model
        if self._lossless is None:
            self._lossless = load_model(self.root / "data/model", dtype, str(self.model.device))[0]
        return self._lossless

    def drafters(self) -> dict[str, str]:
        """The drafter each category chose in the `lossless` stage (none where nothing paid)."""
        path = self.root / "data/drafters.json"
        return json.loads(path.read_text()) if path.is_file() else {}


def load(params_path: str | Path = "params.yaml", root: str | Path = ".", dtype: str | None = None,
         **overrides) -> System:
    """Load model and map with the settings in params.yaml (`dtype` replaces model.dtype;
    `overrides` replace keys of the `skip` section, e.g. mode='soft')."""
    root = Path(root)
    params = load_params(root / params_path if not Path(params_path).is_absolute() else params_path)
    params.setdefault("skip", {}).update(overrides)
    settings = SkipSettings.from_params(params)
    model, tokenizer = load_model(root / "data/model", dtype or get(params, "model.dtype"), get(params, "model.device"))
    topo = TopoMap.load(root / "data/map", model_identity(model))
    decoder = RoutedDecoder(model, topo, settings, k=get(params, "router.k", hi=len(topo)),
                            router=get(params, "router.kind"), batch_size=get(params, "router.batch_size"))
    return System(model, tokenizer, topo, decoder, params, root)


@dataclass
class Generation:
    """A reply and what produced it; `seconds` is the whole request (routing included)."""

    text: str
    mode: str
    category: str
    skipped_layers: list[int]
    plan: str
    seconds: float
    new_tokens: int
    dtype: str
    drafter: str | None = None
    mean_accepted: float | None = None


def route(system: System, prompt: str) -> dict:
    """Where a prompt goes: category, nearest map entries with similarities, and its skip plan.
    The learned router does not search the map; here it is searched only to show the neighbours."""
    model, decoder = system.model, system.decoder
    batch = encode_prompts(system.tokenizer, [check_prompt(prompt)], model.device, context_length(model))
    vector = router_embedding(model, batch, decoder.pivot, decoder.pooling).cpu().numpy()
    r = decoder.route_embeddings(vector)[0]
    neighbours, similarities = r.neighbours, r.similarities
    if not neighbours:
        sims, idx = system.topo.search(vector, decoder.k)
        neighbours, similarities = idx[0].tolist(), [round(float(v), 4) for v in sims[0]]
    return {"category": r.category, "router": decoder.router, "neighbours": neighbours,
            "neighbour_categories": [system.topo.categories[int(system.topo.labels[i])] for i in neighbours],
            "similarities": similarities, "plan": r.plan.describe(), "skipped_layers": r.plan.layers}


def generate(system: System, prompt: str, mode: str | None = None, max_new_tokens: int = 64) -> Generation:
    """Greedy reply under `mode` (default: params.yaml `skip.mode`): full (no skip), hard / soft
    (the routed plan), lossless (speculative decoding with the category's drafter, verified by the
    full model in `lossless.dtype`; identical tokens to full at that dtype). For full, hard and
    soft, the routed decoder runs the router's layers once and continues from them."""
    mode = mode or system.decoder.settings.mode
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} must be one of {', '.join(MODES)}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be a positive integer")
    prompt = check_prompt(prompt)
    model, tok = system.model, system.tokenizer
    synchronize(model.device)
    start = time.perf_counter()
    if mode == "lossless":
        route_, new, drafter, mean_accepted, dtype = _lossless(system, prompt, max_new_tokens)
        plan_text, skipped = f"verify with all layers; drafter {drafter}", []
    else:
        batch = encode_prompts(tok, [prompt], model.device, context_length(model) - max_new_tokens)
        ids, routes = system.decoder.generate(batch, max_new_tokens, tok.eos_token_id, mode=mode)
        route_, new, drafter, mean_accepted, dtype = routes[0], ids[0].tolist(), None, None, model.dtype
        plan_text, skipped = route_.plan.describe(), route_.plan.layers
    synchronize(model.device)
    seconds = time.perf_counter() - start
    if tok.eos_token_id in new:  # rows that ended are padded after their end-of-sequence token
        new = new[:new.index(tok.eos_token_id) + 1]
    return Generation(tok.decode(new, skip_special_tokens=True), mode, route_.category, skipped, plan_text, seconds,
                      len(new), dtype_name(dtype), drafter, mean_accepted)


def _lossless(system: System, prompt: str, max_new_tokens: int) -> tuple[Route, list[int], str, float, object]:
    """Speculative decoding with the prompt's category's drafter, verified in `lossless.dtype`. When
    that is the main model's dtype, the prefill routes the prompt (the router's layers are its first
    layers); otherwise the prompt is routed first."""
    params, tok, decoder = system.params, system.tokenizer, system.decoder
    chosen = system.drafters()
    verifier = system.lossless_model()
    routes = []

    def drafter_for(route):
        routes.append(route)
        plan = decoder.plan_for(route.category, get(params, "lossless.draft_fraction"), mode="hard")
        return make_drafter(chosen.get(route.category, "none"), plan, get(params, "lossless.confidence"),
                            get(params, "lossless.ngram"), decoder.skippable_layers(),
                            get(params, "lossless.clasp_interval"))

    ids = chat_ids(tok, prompt, context_length(verifier) - max_new_tokens - get(params, "lossless.gamma") - 1)
    if verifier is system.model:
        drafter, router = drafter_for, decoder
    else:
        drafter, router = drafter_for(decoder.route_prompts(tok, [prompt], mode="full")[0]), None
    new, stats = speculative_generate(verifier, ids, max_new_tokens, drafter, get(params, "lossless.gamma"),
                                      eos_token_id=tok.eos_token_id, router=router)
    return routes[0], new, stats.drafter, stats.mean_accepted, verifier.dtype
