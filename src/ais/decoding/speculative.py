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
  NoDraft      — plain greedy decoding with the same loop.

The loop does what `generate` does where no draft is made: the prompt's prefill computes the head
on its last position only and yields the first new token, then one cached forward per token.

transformers' assisted generation (5.x) hosts drafters as candidate generators: one returns
candidate token ids, and may ask for the verify's outputs (`requires_model_outputs`, so CLaSp's
hidden states could reach it). But the verify is always the model's own forward over every layer
and every candidate position, and a drafter on the same weights keeps its own cache: the routed
draft's shared prefix (the verify starting from the draft's states at the lowest skipped layer,
reusing the lower layers' keys and values) cannot be expressed there. Hence this short loop,
which with no draft does what `generate` does (see `prefill`).
"""
from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from ais.device import synchronize
from ais.model.forward import layer_kwargs, run_layers
from ais.model.gating import SkipPlan, decoder_layers, skipping


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

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted(self) -> float:
        return self.accepted / self.steps if self.steps else 0.0


def truncate_cache(cache, length: int, from_layer: int = 0) -> None:
    """Keep the first `length` positions in every layer from `from_layer` on that holds more
    (layers a draft skipped hold fewer and are left alone; DynamicCache.crop would cut them too)."""
    for layer in cache.layers[from_layer:]:
        keys = getattr(layer, "keys", None)
        if keys is not None and keys.shape[-2] > length:
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]


def forward_tokens(model, ids: list[int], cache) -> torch.Tensor:
    """Logits (len(ids) x vocab) for new tokens appended to the cache (batch of one, no padding)."""
    out = model(input_ids=torch.tensor([ids], device=model.device), past_key_values=cache, use_cache=True)
    return out.logits[0]


def prefill_logits(model, ids: list[int], cache) -> torch.Tensor:
    """Fill the cache with the prompt and return the logits (1 x vocab) of the first new token, as
    `generate` does: the head runs on the last position only."""
    return model(input_ids=torch.tensor([ids], device=model.device), past_key_values=cache, use_cache=True,
                 logits_to_keep=1).logits[0, -1:]


def prefill(model, ids: list[int], cache) -> int:
    """Fill the cache with the prompt and return the first new (greedy) token."""
    return int(prefill_logits(model, ids, cache)[-1].argmax())


@contextmanager
def recording_states(model):
    """Collect, while a full forward runs, the hidden state entering each decoder layer and the last
    layer's output: L + 1 tensors of 1 x n x d (n = positions of that forward)."""
    states: list[torch.Tensor] = []

    def keep(module, args, out):
        states.append(out[0] if isinstance(out, tuple) else out)

    hooks = [model.model.embed_tokens.register_forward_hook(keep)]
    hooks += [layer.register_forward_hook(keep) for layer in decoder_layers(model)]
    try:
        yield states
    finally:
        for hook in hooks:
            hook.remove()


def _logits(model, hidden) -> torch.Tensor:
    """Logits for every position of `hidden` (1 x n x d -> n x vocab), as LlamaForCausalLM computes them."""
    return model.lm_head(model.model.norm(hidden))[0]


def _verify(model, context: list[int], draft: Draft, cache) -> torch.Tensor:
    """Full-model logits for [last context token] + draft tokens. With a shared prefix, layers
    below `draft.shared` run only for the last drafted token (the draft never fed it back)."""
    ids = [context[-1]] + draft.tokens
    if draft.hidden is None:
        return forward_tokens(model, ids, cache)
    x = model.model.embed_tokens(torch.tensor([ids[-1:]], device=model.device))
    tail = run_layers(model, x, layer_kwargs(model, x, cache, layer=0), 0, draft.shared)
    hidden = torch.cat([draft.hidden, tail], 1)
    ctx = layer_kwargs(model, hidden, cache, layer=draft.shared)  # sized by a layer the draft did not extend
    return _logits(model, run_layers(model, hidden, ctx, draft.shared, len(decoder_layers(model))))


class Drafter:
    """Proposes tokens; told after each verify step how many were accepted."""

    name = "drafter"

    def propose(self, model, context: list[int], cache, gamma: int) -> Draft:
        raise NotImplementedError

    def observe(self, drafted: int, accepted: int, gamma: int) -> None:
        """Called after each verify step (drafters that adapt override this)."""


class NoDraft(Drafter):
    name = "none"

    def propose(self, model, context: list[int], cache, gamma: int) -> Draft:
        return Draft()


class PromptLookup(Drafter):
    """Draft by n-gram match: find the last `ngram` tokens earlier in the context and propose
    what followed them (longest n-gram first, down to 1)."""

    name = "prompt_lookup"

    def __init__(self, ngram: int = 3):
        self.ngram = ngram

    def propose(self, model, context: list[int], cache, gamma: int) -> Draft:
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

    def propose(self, model, context: list[int], cache, gamma: int) -> Draft:
        start = cache.get_seq_length()
        n_layers = len(decoder_layers(model))
        tokens, hidden, last = [], [], context[-1]
        with skipping(model, self.plan):
            for _ in range(gamma):
                x = model.model.embed_tokens(torch.tensor([[last]], device=model.device))
                ctx = layer_kwargs(model, x, cache)
                h = run_layers(model, x, ctx, 0, self.shared)
                hidden.append(h)
                probs = torch.softmax(_logits(model, run_layers(model, h, ctx, self.shared, n_layers))[-1].float(), -1)
                p, token = probs.max(-1)
                tokens.append(int(token))
                last = int(token)
                if p.item() < self.threshold:  # the unsure token is still proposed (Draft&Verify): it is computed already
                    break
        truncate_cache(cache, start, from_layer=self.shared)
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

    def __init__(self, layer_cache, length: int, batch: int):
        self.keys = layer_cache.keys[..., :length, :].expand(batch, -1, -1, -1)
        self.values = layer_cache.values[..., :length, :].expand(batch, -1, -1, -1)

    def update(self, key_states, value_states, layer_idx=None, cache_kwargs=None):
        return torch.cat([self.keys, key_states], -2), torch.cat([self.values, value_states], -2)


@torch.no_grad()
def clasp_layers(model, states: list[torch.Tensor], cache, position: int, n_skip: int, allowed) -> list[int]:
    """CLaSp's dynamic programme: the `n_skip` layers (of `allowed`) to skip so that the token at
    `position` ends each layer as close (cosine) to the full model's state there as the choices allow.

    `states[i]` (d) is the full model's state entering layer i (`states[L]`: the last layer's
    output); the cache holds that token's predecessors at every layer. g(i, j), the state after
    layer i with j of layers 0..i skipped, is whichever of "layer i run on g(i-1, j)" and "layer i
    skipped from g(i-1, j-1)" is closer to the full model's state after layer i; the candidates of
    one layer run in one batched call. The skip set is read back from (L, n_skip)."""
    layers, allowed = decoder_layers(model), set(allowed)
    best = {0: (states[0], ())}  # skipped-so-far j -> (state, skipped layers)
    for i, layer in enumerate(layers):
        js = sorted(best)
        batch = torch.stack([best[j][0] for j in js])[:, None, :]
        position_ids = torch.full((1, 1), position, device=batch.device)
        ran = layer(batch, attention_mask=None, position_ids=position_ids,
                    past_key_values=_CandidateCache(cache.layers[i], position, len(js)), use_cache=True,
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

    def refresh(self, model, states: list[torch.Tensor], cache, position: int) -> None:
        """After each verify (and the prefill): the full model's states of the last accepted token."""
        self._since += 1
        if self._since < self.interval:
            return
        self._since = 0
        self.plan = SkipPlan.make(hard=clasp_layers(model, states, cache, position, self.n_skip, self.allowed))
        self.updates += 1


DRAFTERS = ("none", "routed_skip", "clasp", "prompt_lookup")  # a category chooses among these
# routed_skip without one of its two refinements, measured to show what each buys
ABLATIONS = ("routed_skip_fixed_threshold", "routed_skip_no_shared_prefix")


def make_drafter(name: str, plan, confidence: float, ngram: int, allowed=(), clasp_interval: int = 1):
    """A fresh drafter (the routed ones adapt their threshold within one generation). CLaSp skips as
    many layers as `plan`, chosen among `allowed` (the layers any plan may skip)."""
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
    raise ValueError(f"unknown drafter {name!r}; choose from {', '.join(DRAFTERS + ABLATIONS)}")


@torch.inference_mode()
def speculative_generate(model, prompt_ids: list[int], max_new_tokens: int, drafter=None, gamma: int = 4,
                         eos_token_id: int | None = None, router=None) -> tuple[list[int], SpecStats]:
    """Greedy continuation of `prompt_ids` (identical to plain greedy decoding), with drafts
    from `drafter` verified by the full model. Returns (new tokens, stats).

    With `router` (a RoutedDecoder on this very model), the prefill routes the prompt for free (the
    router's layers are the prefill's first layers) and `drafter` may be a function of the route,
    called once the route is known: what the deployed system does."""
    stats = SpecStats()
    synchronize(model.device)  # the clock starts with the device idle; each step ends reading tokens on the host
    started = time.perf_counter()
    cache = DynamicCache(config=model.config)
    choose = router is not None and callable(drafter) and not isinstance(drafter, Drafter)
    record = choose or getattr(drafter, "needs_states", False)
    with recording_states(model) if record else nullcontext() as states:
        if router is None:
            first = prefill(model, prompt_ids, cache)  # the cache then holds every context token but the last
        else:
            if router.model is not model:
                raise ValueError("the router must run on the model that verifies (the same weights and dtype)")
            ids = torch.tensor([prompt_ids], device=model.device)
            logits, routes = router.route_and_prefill({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, cache)
            first, stats.category = int(logits[0].argmax()), routes[0].category
            if choose:
                drafter = drafter(routes[0])
    drafter = drafter or NoDraft()
    stats.drafter = drafter.name
    record = getattr(drafter, "needs_states", False)
    if record:
        t0 = time.perf_counter()
        drafter.refresh(model, [s[0, -1] for s in states], cache, len(prompt_ids) - 1)
        stats.draft_seconds += time.perf_counter() - t0
    context, new = list(prompt_ids) + [first], [first]
    if first == eos_token_id or max_new_tokens <= 1:
        stats.seconds = time.perf_counter() - started
        return new[:max_new_tokens], stats
    while len(new) < max_new_tokens:
        room = max_new_tokens - len(new) - 1
        budget = min(gamma, room)
        t0 = time.perf_counter()
        draft = drafter.propose(model, context, cache, budget) if room > 0 else Draft()
        t1 = time.perf_counter()
        with recording_states(model) if record else nullcontext() as states:
            predicted = _verify(model, context, draft, cache).argmax(-1).tolist()
        stats.draft_seconds += t1 - t0
        stats.verify_seconds += time.perf_counter() - t1
        accepted = 0
        while accepted < len(draft.tokens) and draft.tokens[accepted] == predicted[accepted]:
            accepted += 1
        drafter.observe(len(draft.tokens), accepted, budget)
        # keep the cache of the last context token and the accepted drafts only
        truncate_cache(cache, len(context) + accepted)
        if record:  # the full model's states of the last accepted token, at its position
            t0 = time.perf_counter()
            drafter.refresh(model, [s[0, accepted] for s in states], cache, len(context) - 1 + accepted)
            stats.draft_seconds += time.perf_counter() - t0
        step = draft.tokens[:accepted] + [predicted[accepted]]
        stats.steps += 1
        stats.drafted += len(draft.tokens)
        stats.accepted += accepted
        stats.accepted_per_step.append(accepted)
        for token in step:
            new.append(token)
            context.append(token)
            if token == eos_token_id or len(new) == max_new_tokens:
                stats.seconds = time.perf_counter() - started
                return new, stats
    stats.seconds = time.perf_counter() - started
    return new, stats
