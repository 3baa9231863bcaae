"""The public API: load the built pipeline artifacts in one call, route prompts, generate.

    from ais.api import generate, load, route
    system = load()                                  # params.yaml + data/model + data/map
    route(system, "Summarise this: ...")             # category, neighbours, similarities, skip plan
    generate(system, "What is 12 plus 30?")          # in skip.mode; or mode="full" | "hard" | "soft" | "lossless" | "dynamic"
    generate(system, ["Hi", "What is 2+2?"])         # several prompts in one batch: one Generation each
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ais.model.plan import DepthGate
from ais import trace
from ais.decoding.routed import Route, RoutedDecoder
from ais.decoding.datastore import FILE as DATASTORE, Datastore
from ais.decoding.speculative import DRAFT_KEYS, drafter_for_route, speculative_generate
from ais.device import Stopwatch, dtype_name, pick_dtype
from ais.methods import MethodError, method_class, names
from ais.model.engine import Engine
from ais.model.loading import load_model, model_identity
from ais.model.prompts import chat_ids, check_prompt, context_length, encode_prompts
from ais.params import get, load_params
from ais.routing.budget import SkipSettings, n_layers_to_skip
from ais.routing.topomap import TopoMap

MODES = ("full", "hard", "soft", "lossless", "dynamic")
GATES = "data/dynamic_gates.json"   # the per-token gates the frontier calibrated, by skipped layer count
DRAFTERS = "data/drafters.json"     # the drafter each category chose in the lossless stage (a clock's choice)


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
    _datastore: object = None

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

    def datastore(self) -> Datastore | None:
        """The suffix drafter's datastore (stage `datastore`), read once; None before it was built."""
        if self._datastore is None and (self.root / DATASTORE / "datastore.json").is_file():
            self._datastore = Datastore.load(self.root / DATASTORE, self.topo.identity)
        return self._datastore

    def drafters(self) -> dict[str, str]:
        """The drafter each category chose in the `lossless` stage (none where nothing paid)."""
        path = self.root / DRAFTERS
        return json.loads(path.read_text()) if path.is_file() else {}


def read_gates(path: Path) -> dict[int, DepthGate]:
    """The per-token gates the frontier calibrated ({skipped layers: gate}), or {} before it ran."""
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is corrupt ({err}); rerun `dvc repro -f frontier`") from err
    return {int(n): DepthGate(g["threshold"], g["min_layer"], g["candidates"]) for n, g in raw.items()}


def load(params_path: str | Path = "params.yaml", root: str | Path = ".", dtype: str | None = None,
         **overrides) -> System:
    """Load model and map with the settings in params.yaml (`dtype` replaces model.dtype;
    `overrides` replace keys of the `skip` section, e.g. mode='soft')."""
    root = Path(root)
    params = load_params(root / params_path if not Path(params_path).is_absolute() else params_path)
    params.setdefault("skip", {}).update(overrides)
    trace.overridden({f"skip.{k}" for k in overrides})  # given here, not read from params.yaml
    settings = SkipSettings.from_params(params)
    model, tokenizer = load_model(root / "data/model", dtype or get(params, "model.dtype"), get(params, "model.device"))
    topo = TopoMap.load(root / "data/map", model_identity(model))
    decoder = RoutedDecoder(model, topo, settings, k=get(params, "router.k", hi=len(topo)),
                            router=get(params, "router.kind"), batch_size=get(params, "router.batch_size"),
                            importance_path=root / "data/importance.npz", gates=lambda: read_gates(root / GATES),
                            params=params, root=root)
    return System(model, tokenizer, topo, decoder, params, root)


@dataclass
class Generation:
    """A reply and what produced it; `seconds` is the whole request (routing included; for a batch,
    the batch's time, shared by its requests)."""

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
    batch_size: int = 1


def route(system: System, prompt: str) -> dict:
    """Where a prompt goes: category, nearest map entries with similarities, and its skip plan.
    The learned router does not search the map; here it is searched only to show the neighbours."""
    decoder = system.decoder
    r = decoder.route_prompts(system.tokenizer, [check_prompt(prompt)])[0]
    neighbours, similarities = r.neighbours, r.similarities
    if not neighbours:
        sims, idx = system.topo.search(r.embedding[None], decoder.k)
        neighbours, similarities = idx[0].tolist(), [round(float(v), 4) for v in sims[0]]
    return {"category": r.category, "router": decoder.router, "plan_kind": decoder.settings.plan, "neighbours": neighbours,
            "neighbour_categories": [system.topo.categories[int(system.topo.labels[i])] for i in neighbours],
            "similarities": similarities, "plan": r.plan.describe(), "skipped_layers": r.plan.layers}


def _decoder_for(system: System, plan: str | None, mode: str) -> RoutedDecoder:
    decoder = system.decoder
    if plan is not None and plan != decoder.settings.plan:
        if plan not in names(deployable_only=True):
            raise MethodError(f"plan={plan!r} must be one of {', '.join(names(deployable_only=True))}")
        decoder = decoder.with_plan(plan)
    if mode == "dynamic" and not decoder.method.per_token:
        decoder = decoder.with_plan("dynamic")
    if decoder.method.per_token:
        n = n_layers_to_skip(decoder.settings.fraction, decoder.engine.n_layers)
        if n not in decoder.method.gates:
            measured = sorted(decoder.method.gates) or "none"
            raise ValueError(f"mode dynamic runs the per-token gate the frontier calibrated for skip.fraction's {n} "
                             f"layers, and {GATES} holds gates for {measured}: add the fraction to frontier.fractions "
                             "and run `dvc repro frontier`")
    return decoder


def generate(system: System, prompt: str | list[str], mode: str | None = None, max_new_tokens: int = 64,
             plan: str | None = None):
    """Greedy reply under `mode` (default: params.yaml `skip.mode`) to one prompt (a Generation) or to a
    list of prompts, decoded as one batch in which each row has its own plan (a list of Generations):
    full (no skip), hard / soft (the plan of `plan`, default `skip.plan`: a method of `ais.methods`),
    dynamic (per-token depth with the gate the frontier calibrated for `skip.fraction`'s layers;
    `skipped_layers` is then the mean number of layers a generated token skipped), lossless
    (speculative decoding with the category's drafter, verified by the full model in `lossless.dtype`;
    identical tokens to full at that dtype; one request at a time, as transformers' assisted generation).
    The router's layers run once: they are the first layers of the prefill."""
    mode = mode or system.decoder.settings.mode
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} must be one of {', '.join(MODES)}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be a positive integer")
    single = isinstance(prompt, (str, bytes))
    prompts = [check_prompt(p) for p in ([prompt] if single else list(prompt))]
    if not prompts:
        raise ValueError("no prompts given")
    if mode == "lossless":
        out = [_lossless(system, p, max_new_tokens) for p in prompts]
    else:
        out = _batch(system, prompts, mode, max_new_tokens, plan)
    return out[0] if single else out


def _batch(system: System, prompts: list[str], mode: str, max_new_tokens: int, plan: str | None) -> list[Generation]:
    model, tok = system.model, system.tokenizer
    decoder = _decoder_for(system, plan, mode)
    batch = encode_prompts(tok, prompts, model.device, context_length(model) - max_new_tokens)
    with Stopwatch(model.device) as clock:
        ids, routes, depth = decoder.generate(batch, max_new_tokens, tok.eos_token_id,
                                              mode="hard" if mode == "dynamic" else mode)
    out = []
    for row, route_ in enumerate(routes):
        new = ids[row].tolist()
        end = new.index(tok.eos_token_id) + 1 if tok.eos_token_id in new else len(new)
        if depth is not None:
            decoded = depth[row, 1:end].tolist() or depth[row, :1].tolist()
            mean = sum(decoded) / len(decoded)
            n_layers = decoder.engine.n_layers
            gate = decoder.method.gate(decoder.budget())
            plan_text = f"{gate.describe(n_layers)}; {mean:.1f} of {n_layers} layers per generated token"
            skipped = round(n_layers - mean, 2)
        else:
            plan_text, skipped = route_.plan.describe(), route_.plan.layers
        out.append(Generation(tok.decode(new[:end], skip_special_tokens=True), mode, route_.category, skipped, plan_text,
                              clock.seconds, end, dtype_name(model.dtype), batch_size=len(prompts)))
    return out


def _lossless(system: System, prompt: str, max_new_tokens: int) -> Generation:
    """Speculative decoding with the prompt's category's drafter, verified in `lossless.dtype`. When
    that is the main model's dtype, the prefill routes the prompt (the router's layers are its first
    layers); otherwise the prompt is routed first."""
    params, tok, decoder = system.params, system.tokenizer, system.decoder
    chosen = system.drafters()
    verifier = system.lossless_model()
    routes: list[Route] = []
    settings = {k: get(params, f"lossless.{k}") for k in DRAFT_KEYS}

    def drafter_for(route_):
        routes.append(route_)
        name = chosen.get(route_.category, "none")
        return drafter_for_route(decoder, name, route_, settings, system.datastore() if name == "suffix" else None)

    ids = chat_ids(tok, prompt, context_length(verifier) - max_new_tokens - get(params, "lossless.gamma") - 1)
    with Stopwatch(system.model.device) as clock:
        if verifier is system.model:
            drafter, router = drafter_for, decoder
        else:
            drafter, router = drafter_for(decoder.route_prompts(tok, [prompt], mode="full")[0]), None
        new, stats = speculative_generate(Engine(verifier), ids, max_new_tokens, drafter, get(params, "lossless.gamma"),
                                          eos_token_id=tok.eos_token_id, router=router)
    if tok.eos_token_id in new:
        new = new[:new.index(tok.eos_token_id) + 1]
    return Generation(tok.decode(new, skip_special_tokens=True), "lossless", routes[0].category, [],
                      f"verify with all layers; drafter {stats.drafter}", clock.seconds, len(new),
                      dtype_name(verifier.dtype), stats.drafter, stats.mean_accepted)


__all__ = ["Generation", "MODES", "System", "generate", "load", "method_class", "route"]
