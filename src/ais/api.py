"""The public API: load the built pipeline artifacts in one call, route prompts, generate.

    from ais.api import generate, load, route
    system = load()                                  # params.yaml + data/model + data/map
    route(system, "Summarise this: ...")             # category, neighbours, similarities, skip plan
    generate(system, "What is 12 plus 30?")          # in skip.mode; or mode="full" | "hard" | "soft" | "lossless" | "dynamic"
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from transformers import DynamicCache

from ais.decoding.dynamic import DepthGate, dynamic_continue
from ais.decoding.routed import Route, RoutedDecoder
from ais.decoding.speculative import make_drafter, speculative_generate
from ais.device import dtype_name, pick_dtype, synchronize
from ais.model.loading import load_model, model_identity
from ais.model.prompts import chat_ids, check_prompt, context_length, encode_prompts
from ais.params import get, load_params
from ais.routing.embedding import router_embedding
from ais.routing.plans import SkipSettings, n_layers_to_skip
from ais.routing.topomap import TopoMap

MODES = ("full", "hard", "soft", "lossless", "dynamic")


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

    def dynamic_gate(self) -> DepthGate:
        """The `dynamic` mode's gate from params.yaml: `dynamic.min_layer: auto` is the router's pivot
        (the same layers a plan may skip); `dynamic.candidates` a fraction of the layers (the least
        important past the pivot, pooled importance) or `all` (CALM's plain early exit)."""
        min_layer = get(self.params, "dynamic.min_layer")
        min_layer = self.decoder.pivot if min_layer == "auto" else min_layer
        share = get(self.params, "dynamic.candidates")
        n_layers = self.model.config.num_hidden_layers
        candidates = None if share == "all" else [i for i in self.decoder.global_layers(n_layers_to_skip(share, n_layers))
                                                   if i >= min_layer]
        return DepthGate(get(self.params, "dynamic.threshold"), min_layer, candidates)

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
    skipped_layers: list[int] | float
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
    r = decoder.route_prompts(system.tokenizer, [check_prompt(prompt)])[0]
    neighbours, similarities = r.neighbours, r.similarities
    if not neighbours:
        batch = encode_prompts(system.tokenizer, [prompt], model.device, context_length(model))
        sims, idx = system.topo.search(router_embedding(model, batch, decoder.pivot, decoder.pooling).cpu().numpy(),
                                       decoder.k)
        neighbours, similarities = idx[0].tolist(), [round(float(v), 4) for v in sims[0]]
    return {"category": r.category, "router": decoder.router, "plan_kind": decoder.settings.plan, "neighbours": neighbours,
            "neighbour_categories": [system.topo.categories[int(system.topo.labels[i])] for i in neighbours],
            "similarities": similarities, "plan": r.plan.describe(), "skipped_layers": r.plan.layers}


def generate(system: System, prompt: str, mode: str | None = None, max_new_tokens: int = 64,
             plan: str | None = None) -> Generation:
    """Greedy reply under `mode` (default: params.yaml `skip.mode`): full (no skip), hard / soft
    (the routed plan), lossless (speculative decoding with the category's drafter, verified by the
    full model in `lossless.dtype`; identical tokens to full at that dtype), dynamic (the prompt's
    prefill runs every layer, then each token exits by `dynamic.threshold`; `skipped_layers` is then
    the mean number of layers a generated token skipped). The router's layers run once: they are the
    first layers of the prefill. `plan` (default `skip.plan`) says whose layer scores choose a hard or
    soft plan's layers: global, category, neighbours or prompt (the prompt's own, from a prefill
    through every layer; its plan applies to the generated tokens)."""
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
    elif mode == "dynamic":
        route_, new, depth = _dynamic(system, prompt, max_new_tokens)
        drafter, mean_accepted, dtype = None, None, model.dtype
        gate = system.dynamic_gate()
        plan_text = (f"per token: exit once cos(layer input, output) >= {gate.threshold} from layer {gate.min_layer}; "
                     f"{depth:.1f} of {model.config.num_hidden_layers} layers per generated token")
        skipped = round(model.config.num_hidden_layers - depth, 2)
    else:
        batch = encode_prompts(tok, [prompt], model.device, context_length(model) - max_new_tokens)
        decoder = system.decoder if plan is None else system.decoder.with_plan(plan)
        ids, routes = decoder.generate(batch, max_new_tokens, tok.eos_token_id, mode=mode)
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


def _dynamic(system: System, prompt: str, max_new_tokens: int) -> tuple[Route, list[int], float]:
    """Route during the full prefill, then per-token depth: (route, new ids, mean layers per generated
    token after the first, which the prefill gives)."""
    model, tok = system.model, system.tokenizer
    batch = encode_prompts(tok, [prompt], model.device, context_length(model) - max_new_tokens)
    cache = DynamicCache(config=model.config)
    logits, routes = system.decoder.route_and_prefill(batch, cache)
    ids, depth = dynamic_continue(model, logits.argmax(-1), batch["attention_mask"], cache, max_new_tokens,
                                  system.dynamic_gate(), tok.eos_token_id)
    new, depths = ids[0].tolist(), depth[0].tolist()
    end = new.index(tok.eos_token_id) + 1 if tok.eos_token_id in new else len(new)
    decoded = depths[1:end] or depths[:1]
    return routes[0], new[:end], sum(decoded) / len(decoded)
