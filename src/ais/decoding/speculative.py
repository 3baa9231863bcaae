"""Lossless speculative decoding (greedy, batch size 1): a cheap drafter proposes up to `gamma`
tokens, one full-model forward scores them all, the longest prefix that matches the full model's
own argmax is kept plus the full model's next token, and the KV cache of rejected positions is
rolled back. The output is the full model's greedy decoding, token for token.

Drafters:
  RoutedDraft  — the same model with the prompt's routed hard-skip plan (self-speculation, as in
                 Draft&Verify): drafting stops at the first token whose top-1 probability is below
                 a confidence threshold, which Draft&Verify's rule adapts to the acceptance seen so
                 far. Layers below the lowest skipped layer compute the same values in draft and
                 verify, so the verify starts from the draft's hidden states there (shared prefix).
  ClaspDraft   — CLaSp (Chen et al. 2025): the same self-speculation, but the skip set is chosen
                 again during decoding, by a dynamic programme over the layers on the full model's
                 hidden states of the last accepted token (`clasp_layers`).
  PromptLookup — copies the tokens that followed the last n-gram's earlier occurrence.
  SuffixDraft  — SuffixDecoding's model-free draft: the longest suffix of the context found in the
                 context itself or in a datastore of the full model's replies to similar map prompts
                 (their nearest first), continued by its most frequent continuation there.
  NoDraft      — plain greedy decoding with the same loop.

Everything runs on the engine (`ais.model.engine`, batch size 1): a draft runs the model under its
plan on the shared cache (the layers it skips do not grow; the verify rolls the others back), the
verify runs every layer. The loop does what `generate` does where no draft is made: the prompt's
prefill computes the head on its last position only and yields the first new token, then one
cached forward per token.

transformers' assisted generation (5.x) hosts drafters as candidate generators: one returns
candidate token ids, and may ask for the verify's outputs (`requires_model_outputs`, so CLaSp's
hidden states could reach it). But the verify is always the model's own forward over every layer
and every candidate position, and a drafter on the same weights keeps its own cache: the routed
draft's shared prefix (the verify starting from the draft's states at the lowest skipped layer,
reusing the lower layers' keys and values) cannot be expressed there. Hence this short loop,
which with no draft does what `generate` does (see `prefill`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ais.decoding.suffix import Matcher, SuffixAutomaton
from ais.device import Stopwatch
from ais.model.engine import Batch, Engine, Record
from ais.model.plan import SkipPlan


@dataclass
class Draft:
    """Drafted tokens. When `hidden` is set, it holds the input of layer `shared` (1 x n x d) for
    the first n = len(tokens) verify positions ([last] + tokens[:-1]), computed by the drafter
    with the full model's own layers 0..shared-1, whose cache already holds those positions."""

    tokens: list[int] = field(default_factory=list)
    shared: int = 0
    hidden: torch.Tensor | None = None


@dataclass
class SpecStats:
    """What one generation did: verify steps, drafted and accepted tokens, seconds (in all, and
    spent drafting and verifying: each phase ends by reading its result on the host)."""

    steps: int = 0
    drafter: str = ""
    category: str | None = None  # the routed category, when the prefill routed the prompt
    drafted: int = 0
    accepted: int = 0
    seconds: float = 0.0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    accepted_per_step: list[int] = field(default_factory=list)
    drafted_per_step: list[int] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted(self) -> float:
        return self.accepted / self.steps if self.steps else 0.0


def _positions(start: int, n: int, device) -> torch.Tensor:
    return (torch.arange(n, device=device) + start)[None]


def forward_tokens(flight: Batch, ids: list[int], record: Record | None = None) -> torch.Tensor:
    """Full-model logits (len(ids) x vocab) for new tokens appended after what layer 0 holds (batch of one)."""
    engine = flight.engine
    start = flight.cache.length(0)
    x, ctx = flight.feed(torch.tensor([ids], device=engine.device), position_ids=_positions(start, len(ids), engine.device))
    return engine.head(flight.run(x, ctx, record=record))[0]


def prefill_logits(engine: Engine, ids: list[int]) -> tuple[Batch, torch.Tensor]:
    """(the request in flight, the logits 1 x vocab of the first new token): the prompt fills the
    cache and, as `generate` does, the head runs on its last position only."""
    x = torch.tensor([ids], device=engine.device)
    flight = engine.start(torch.ones_like(x), rollback=True)
    return flight, flight.step(x)


def prefill(engine: Engine, ids: list[int]) -> tuple[Batch, int]:
    """Fill the cache with the prompt and return (the request in flight, the first new greedy token)."""
    flight, logits = prefill_logits(engine, ids)
    return flight, int(logits[-1].argmax())


def _verify(flight: Batch, context: list[int], draft: Draft, record: Record | None = None) -> torch.Tensor:
    """Full-model logits for [last context token] + draft tokens. With a shared prefix, layers
    below `draft.shared` run only for the last drafted token (the draft never fed it back)."""
    ids = [context[-1]] + draft.tokens
    if draft.hidden is None:
        return forward_tokens(flight, ids, record)
    engine = flight.engine
    device = engine.device
    low = flight.cache.length(0)  # the lower layers hold [last] + tokens[:-1]; the last drafted token is new
    x, ctx = flight.feed(torch.tensor([ids[-1:]], device=device), position_ids=_positions(low, 1, device))
    tail = flight.run(x, ctx, 0, draft.shared)
    hidden = torch.cat([draft.hidden, tail], 1)
    start = flight.cache.length(draft.shared)  # the layers the draft rolled back hold the context only
    _, ctx = flight.feed(hidden=hidden, position_ids=_positions(start, hidden.shape[1], device))
    return engine.head(flight.run(hidden, ctx, draft.shared))[0]


class Drafter:
    """Proposes tokens; told after each verify step how many were accepted."""

    name = "drafter"

    def propose(self, flight: Batch, context: list[int], gamma: int) -> Draft:
        raise NotImplementedError

    def observe(self, drafted: int, accepted: int, gamma: int) -> None:
        """Called after each verify step (drafters that adapt override this)."""


class NoDraft(Drafter):
    name = "none"

    def propose(self, flight: Batch, context: list[int], gamma: int) -> Draft:
        return Draft()


class PromptLookup(Drafter):
    """Draft by n-gram match: find the last `ngram` tokens earlier in the context and propose
    what followed them (longest n-gram first, down to 1)."""

    name = "prompt_lookup"

    def __init__(self, ngram: int = 3):
        self.ngram = ngram

    def propose(self, flight: Batch, context: list[int], gamma: int) -> Draft:
        for n in range(min(self.ngram, len(context) - 1), 0, -1):
            tail = context[-n:]
            for start in range(len(context) - n - 1, -1, -1):
                if context[start:start + n] == tail:
                    follow = context[start + n:start + n + gamma]
                    if follow:
                        return Draft(follow)
        return Draft()


# Draft&Verify's adaptive draft-exiting (Zhang et al. 2023, their defaults): a smoothed acceptance
# rate below TARGET raises the threshold by STEP (stop earlier); above it, lowers it unless the
# draft already ran to gamma. The threshold moves by a momentum average.
ACCEPTANCE_SMOOTHING, TARGET_ACCEPTANCE, STEP, THRESHOLD_MOMENTUM = 0.5, 0.9, 0.01, 0.9


class RoutedDraft(Drafter):
    """Draft with the model itself under a hard-skip plan, on the shared cache. The drafted
    positions are rolled back in the layers above the lowest skipped one and kept below it,
    where the verify reuses them (`share_prefix`)."""

    name = "routed_skip"

    def __init__(self, plan: SkipPlan, confidence: float = 0.8, adaptive: bool = True, share_prefix: bool = True):
        self.plan, self.threshold, self.adaptive = plan, confidence, adaptive
        self.shared = min(plan.layers) if share_prefix and plan.layers else 0
        self.acceptance = 0.0
        self._rows = None

    def propose(self, flight: Batch, context: list[int], gamma: int) -> Draft:
        engine = flight.engine
        device = engine.device
        start = flight.cache.length(0)
        if self._rows is None or self._rows.plans[0] != self.plan:
            self._rows = engine.plans([self.plan], 1)  # grouped once per plan, reused every draft token
        plans = self._rows
        tokens, hidden, last = [], [], context[-1]
        for step in range(gamma):
            x, ctx = flight.feed(torch.tensor([[last]], device=device), position_ids=_positions(start + step, 1, device))
            h = flight.run(x, ctx, 0, self.shared, plans=plans)
            hidden.append(h)
            out = flight.run(h, ctx, self.shared, plans=plans)
            probs = torch.softmax(engine.last_logits(out)[0].float(), -1)
            p, token = probs.max(-1)
            tokens.append(int(token))
            last = int(token)
            if p.item() < self.threshold:  # the unsure token is still proposed (Draft&Verify): it is computed already
                break
        flight.truncate(start, from_layer=self.shared)
        if not self.shared:
            return Draft(tokens)
        return Draft(tokens, self.shared, torch.cat(hidden, 1))

    def observe(self, drafted: int, accepted: int, gamma: int) -> None:
        """Draft&Verify's update of the confidence threshold after one verify step."""
        if not self.adaptive or not drafted:
            return
        self.acceptance = ACCEPTANCE_SMOOTHING * self.acceptance + (1 - ACCEPTANCE_SMOOTHING) * accepted / drafted
        if self.acceptance < TARGET_ACCEPTANCE:
            target = self.threshold + STEP
        elif drafted == gamma:
            target = self.threshold
        else:
            target = self.threshold - STEP
        self.threshold = min(1.0, max(0.0, THRESHOLD_MOMENTUM * self.threshold + (1 - THRESHOLD_MOMENTUM) * target))


class _CandidateCache:
    """One layer's cache, the first `length` positions of a real one, shared by a batch of candidate
    states of one new token (what the layer's attention reads and appends to; the real cache is
    left untouched)."""

    def __init__(self, cache, layer: int, length: int, batch: int):
        self.keys = cache.keys[layer][..., :length, :].expand(batch, -1, -1, -1)
        self.values = cache.values[layer][..., :length, :].expand(batch, -1, -1, -1)

    def update(self, key_states, value_states, layer_idx=None, cache_kwargs=None):
        return torch.cat([self.keys, key_states], -2), torch.cat([self.values, value_states], -2)


@torch.no_grad()
def clasp_layers(engine: Engine, states: list[torch.Tensor], cache, position: int, n_skip: int, allowed) -> list[int]:
    """CLaSp's dynamic programme: the `n_skip` layers (of `allowed`) to skip so that the token at
    `position` ends each layer as close (cosine) to the full model's state there as the choices allow.

    `states[i]` (d) is the full model's state entering layer i (`states[L]`: the last layer's
    output); the cache holds that token's predecessors at every layer. g(i, j), the state after
    layer i with j of layers 0..i skipped, is whichever of "layer i run on g(i-1, j)" and "layer i
    skipped from g(i-1, j-1)" is closer to the full model's state after layer i; the candidates of
    one layer run in one batched call. The skip set is read back from (L, n_skip)."""
    layers, allowed, model = engine.layers, set(allowed), engine.model
    best = {0: (states[0], ())}  # skipped-so-far j -> (state, skipped layers)
    for i, layer in enumerate(layers):
        js = sorted(best)
        batch = torch.stack([best[j][0] for j in js])[:, None, :]
        position_ids = torch.full((1, 1), position, device=batch.device)
        ran = layer(batch, attention_mask=None, position_ids=position_ids,
                    past_key_values=_CandidateCache(cache, i, position, len(js)), use_cache=True,
                    position_embeddings=model.model.rotary_emb(batch, position_ids=position_ids))
        ran = (ran[0] if isinstance(ran, tuple) else ran)[:, 0]
        target = states[i + 1].float()[None]
        ran_cos = torch.cosine_similarity(ran.float(), target, dim=-1).tolist()
        kept_cos = torch.cosine_similarity(batch[:, 0].float(), target, dim=-1).tolist()  # skipping layer i
        nxt = {}
        for j in range(min(i + 1, n_skip) + 1):
            options = []
            if j in best:
                row = js.index(j)
                options.append((ran_cos[row], ran[row], best[j][1]))
            if i in allowed and j - 1 in best:
                row = js.index(j - 1)
                options.append((kept_cos[row], batch[row, 0], best[j - 1][1] + (i,)))
            if options:
                cos, state, skipped = max(options, key=lambda o: o[0])
                nxt[j] = (state, skipped)
        best = nxt
    return sorted(best[max(best)][1])


class ClaspDraft(RoutedDraft):
    """Self-speculation with CLaSp's dynamic skip set: every `interval` verify steps (and after the
    prefill), `clasp_layers` chooses `n_skip` layers of `allowed` from the full model's states of
    the last accepted token. Drafting stops as RoutedDraft's does (adaptive confidence threshold);
    no shared prefix, as the verify must give every layer's state."""

    name = "clasp"
    needs_states = True

    def __init__(self, n_skip: int, allowed, confidence: float = 0.8, interval: int = 1):
        super().__init__(SkipPlan.make(), confidence, adaptive=True, share_prefix=False)
        self.n_skip, self.allowed, self.interval = n_skip, list(allowed), interval
        self.updates, self._since = 0, interval

    def refresh(self, flight: Batch, states: list[torch.Tensor], position: int) -> None:
        """After each verify (and the prefill): the full model's states of the last accepted token."""
        self._since += 1
        if self._since < self.interval:
            return
        self._since = 0
        self.plan = SkipPlan.make(hard=clasp_layers(flight.engine, states, flight.cache, position, self.n_skip,
                                                    self.allowed))
        self.updates += 1


DRAFTERS = ("none", "routed_skip", "clasp", "prompt_lookup", "suffix")  # a category chooses among these
class SuffixDraft(Drafter):
    """Model-free drafts from suffix automata (SuffixDecoding, REST): the longest suffix of the
    context (prompt and reply so far) that occurs earlier in the context itself, or in each of
    `sources` (fixed texts, e.g. the full model's replies to the request's nearest map prompts, then
    to every datastore prompt), searched in that order; the longest match wins (ties: the earlier
    source). Its draft follows the most frequent continuation there, for at most `factor` times the
    match length (SuffixDecoding's adaptive length) and while the continuation's empirical
    probability stays at or above `min_probability`."""

    name = "suffix"

    def __init__(self, sources=(), factor: float = 2.0, min_probability: float = 0.1):
        self.own = SuffixAutomaton()
        self.matchers = [Matcher(a) for a in sources]
        self.factor, self.min_probability = factor, min_probability

    def propose(self, flight: Batch, context: list[int], gamma: int) -> Draft:
        for token in context[len(self.own):]:  # the context only grows
            self.own.extend(token)
            for m in self.matchers:
                m.feed(token)
        best = (*self.own.repeated_suffix(), self.own)
        for m in self.matchers:
            if m.length > best[1]:
                best = (m.state, m.length, m.automaton)
        state, length, automaton = best
        if length == 0:
            return Draft()
        limit = min(gamma, max(1, int(self.factor * length)))
        return Draft(automaton.continuation(state, limit, self.min_probability))


# routed_skip without one of its two refinements, measured to show what each buys
ABLATIONS = ("routed_skip_fixed_threshold", "routed_skip_no_shared_prefix")


def make_drafter(name: str, plan, confidence: float, ngram: int, allowed=(), clasp_interval: int = 1, sources=(),
                 suffix_factor: float = 2.0, suffix_probability: float = 0.1):
    """A fresh drafter (the routed ones adapt their threshold within one generation). CLaSp skips as
    many layers as `plan`, chosen among `allowed` (the layers any plan may skip); the suffix drafter
    searches `sources` after the context (`ais.decoding.datastore.Datastore.sources`)."""
    if name == "none":
        return NoDraft()
    if name == "routed_skip":
        return RoutedDraft(plan, confidence)
    if name == "clasp":
        return ClaspDraft(len(plan.layers), allowed, confidence, clasp_interval)
    if name == "routed_skip_fixed_threshold":
        return RoutedDraft(plan, confidence, adaptive=False)
    if name == "routed_skip_no_shared_prefix":
        return RoutedDraft(plan, confidence, share_prefix=False)
    if name == "prompt_lookup":
        return PromptLookup(ngram)
    if name == "suffix":
        return SuffixDraft(sources, suffix_factor, suffix_probability)
    raise ValueError(f"unknown drafter {name!r}; choose from {', '.join(DRAFTERS + ABLATIONS)}")


DRAFT_KEYS = ("draft_fraction", "confidence", "ngram", "clasp_interval", "suffix_factor", "suffix_probability",
              "suffix_neighbours")  # the `lossless.*` settings a drafter is made from


def drafter_for_route(decoder, name: str, route, settings: dict, datastore=None) -> Drafter:
    """The drafter `name` for a routed request, as the system deploys it and the lossless stage
    measures it: the routed plan skips `draft_fraction` of the layers (hard), CLaSp as many; the
    suffix drafter searches the datastore's replies to the request's nearest map prompts, then all.
    `settings` holds DRAFT_KEYS; `route` may be None for drafters that need none."""
    from ais.routing.budget import n_layers_to_skip

    layers = n_layers_to_skip(settings["draft_fraction"], decoder.engine.n_layers)
    plan = decoder.plan_for(route.category, layers, mode="hard") if route is not None else SkipPlan()
    sources = (datastore.sources(route.embedding if route is not None else None, settings["suffix_neighbours"])
               if datastore is not None and name == "suffix" else ())
    return make_drafter(name, plan, settings["confidence"], settings["ngram"], decoder.skippable_layers(),
                        settings["clasp_interval"], sources, settings["suffix_factor"], settings["suffix_probability"])


@torch.inference_mode()
def speculative_generate(engine: Engine, prompt_ids: list[int], max_new_tokens: int, drafter=None, gamma: int = 4,
                         eos_token_id: int | None = None, router=None) -> tuple[list[int], SpecStats]:
    """Greedy continuation of `prompt_ids` (identical to plain greedy decoding), with drafts
    from `drafter` verified by the full model. Returns (new tokens, stats).

    With `router` (a RoutedDecoder on this very model), the prefill routes the prompt for free (the
    router's layers are the prefill's first layers) and `drafter` may be a function of the route,
    called once the route is known: what the deployed system does."""
    stats = SpecStats()
    with Stopwatch(engine.device) as total:
        new = _speculate(engine, prompt_ids, max_new_tokens, drafter, gamma, eos_token_id, router, stats)
    stats.seconds = total.seconds
    return new, stats


def _speculate(engine, prompt_ids, max_new_tokens, drafter, gamma, eos_token_id, router, stats) -> list[int]:
    choose = router is not None and callable(drafter) and not isinstance(drafter, Drafter)
    needs_states = getattr(drafter, "needs_states", False) or choose
    record = Record(states=True) if needs_states else None
    ids = torch.tensor([prompt_ids], device=engine.device)
    if router is None:
        flight = engine.start(torch.ones_like(ids), rollback=True)
        x, ctx = flight.feed(ids)
        logits = engine.last_logits(flight.run(x, ctx, record=record))
    else:
        if router.engine.model is not engine.model:
            raise ValueError("the router must run on the model that verifies (the same weights and dtype)")
        flight, logits, routes = router.prefill({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, mode="full",
                                                record=record)
        flight.rollback = True
        stats.category = routes[0].category
        if choose:
            drafter = drafter(routes[0])
    first = int(logits[0].argmax())
    drafter = drafter or NoDraft()
    stats.drafter = drafter.name
    refreshes = getattr(drafter, "needs_states", False)
    if refreshes:
        with Stopwatch(engine.device) as clock:
            drafter.refresh(flight, [s[0, -1] for s in record.kept_states], len(prompt_ids) - 1)
        stats.draft_seconds += clock.seconds
    context, new = list(prompt_ids) + [first], [first]
    if first == eos_token_id or max_new_tokens <= 1:
        return new[:max_new_tokens]
    while len(new) < max_new_tokens:
        room = max_new_tokens - len(new) - 1
        budget = min(gamma, room)
        with Stopwatch(engine.device) as drafting:
            draft = drafter.propose(flight, context, budget) if room > 0 else Draft()
        record = Record(states=True) if refreshes else None
        with Stopwatch(engine.device) as verifying:
            predicted = _verify(flight, context, draft, record).argmax(-1).tolist()
        stats.draft_seconds += drafting.seconds
        stats.verify_seconds += verifying.seconds
        accepted = 0
        while accepted < len(draft.tokens) and draft.tokens[accepted] == predicted[accepted]:
            accepted += 1
        drafter.observe(len(draft.tokens), accepted, budget)
        # keep the cache of the last context token and the accepted drafts only
        flight.truncate(len(context) + accepted)
        if refreshes:  # the full model's states of the last accepted token, at its position
            with Stopwatch(engine.device) as clock:
                drafter.refresh(flight, [s[0, accepted] for s in record.kept_states], len(context) - 1 + accepted)
            stats.draft_seconds += clock.seconds
        step = draft.tokens[:accepted] + [predicted[accepted]]
        stats.steps += 1
        stats.drafted += len(draft.tokens)
        stats.accepted += accepted
        stats.accepted_per_step.append(accepted)
        stats.drafted_per_step.append(len(draft.tokens))
        for token in step:
            new.append(token)
            context.append(token)
            if token == eos_token_id or len(new) == max_new_tokens:
                return new
    return new
