"""Lossless speculative decoding: token-for-token identical to greedy, whatever the drafts."""
import numpy as np
import pytest
import torch

from ais.decoding.greedy import generate
from ais.decoding.datastore import Datastore
from ais.decoding.speculative import (ClaspDraft, Draft, Drafter, NoDraft, PromptLookup, RoutedDraft, SuffixDraft,
                                     clasp_layers, forward_tokens, prefill_logits)
from ais.decoding.speculative import speculative_generate as _speculative
from ais.model.engine import Engine, Record
from ais.model.plan import SkipPlan
from conftest import left_padded, tiny_llama

PROMPTS = [[1, 5, 9, 14, 22, 7], [1, 30, 4], [1, 8, 9, 10, 11, 8, 9, 10, 11, 8, 9], [1, 11, 13, 17, 11, 13, 17, 11]]


def greedy(model, prompt, n):
    return generate(Engine(model), left_padded([prompt]), n)[0].tolist()


def speculative_generate(model, *args, **kwargs):
    return _speculative(Engine(model), *args, **kwargs)


class Scripted(Drafter):
    """Proposes the true greedy continuation with a wrong token at `wrong_at` (None: all right)."""

    name = "scripted"

    def __init__(self, truth, prompt_len, wrong_at):
        self.truth, self.prompt_len, self.wrong_at = truth, prompt_len, wrong_at

    def propose(self, flight, context, gamma):
        done = len(context) - self.prompt_len
        draft = list(self.truth[done:done + gamma])
        if self.wrong_at is not None and self.wrong_at < len(draft):
            draft[self.wrong_at] = (draft[self.wrong_at] + 1) % 97
        return Draft(draft)


@pytest.fixture(scope="module")
def model():
    return tiny_llama(dtype=torch.float64, seed=3)


DRAFTERS = {"none": lambda: NoDraft(), "lookup2": lambda: PromptLookup(2), "lookup3": lambda: PromptLookup(3),
            "routed_always": lambda: RoutedDraft(SkipPlan.make(hard=[4]), 0.0),
            "routed_shared": lambda: RoutedDraft(SkipPlan.make(hard=[2, 3]), 0.5),
            "routed_recompute_fixed": lambda: RoutedDraft(SkipPlan.make(hard=[2, 3]), 0.5, adaptive=False, share_prefix=False),
            "routed_soft_plan": lambda: RoutedDraft(SkipPlan.make(hard=[3], soft={1: 0.5}), 0.3),
            "clasp_every_step": lambda: ClaspDraft(2, [1, 2, 3, 4], 0.0),
            "clasp_every_third": lambda: ClaspDraft(1, [2, 3], 0.5, interval=3),
            "suffix_context": lambda: SuffixDraft(),
            "suffix_datastore": lambda: SuffixDraft([Datastore.automaton([[9, 14, 22, 7, 3, 3], [8, 9, 10, 50, 51]])],
                                                    factor=4.0, min_probability=0.0)}


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("drafter", DRAFTERS)
@pytest.mark.parametrize("gamma", [1, 3, 6])
def test_identical_to_greedy_for_every_drafter(model, prompt, drafter, gamma):
    expected = greedy(model, prompt, 20)
    tokens, stats = speculative_generate(model, prompt, 20, DRAFTERS[drafter](), gamma)
    assert tokens == expected
    assert stats.accepted <= stats.drafted and 1 + stats.steps + stats.accepted == 20  # the prefill gives the first
    assert 0 < stats.draft_seconds + stats.verify_seconds <= stats.seconds  # the phases are parts of the whole


@pytest.mark.parametrize("wrong_at", [None, 0, 1, 2])
def test_accepted_rejected_first_and_midway(model, wrong_at):
    prompt = PROMPTS[0]
    truth = greedy(model, prompt, 25)  # the prefill gives the first; 24 = whole steps of 1, 2 or 3 tokens
    tokens, stats = speculative_generate(model, prompt, 25, Scripted(truth, len(prompt), wrong_at), gamma=4)
    assert tokens == truth
    if wrong_at is None:
        assert stats.accepted_per_step[0] == 4 and stats.steps < 24 / 2
    else:
        assert set(stats.accepted_per_step) == {wrong_at}


def test_stops_at_eos_and_max_new_tokens(model):
    prompt = PROMPTS[2]
    truth = greedy(model, prompt, 16)
    pos = next(j for j in range(2, 12) if truth[j] not in truth[:j])
    for drafter in (NoDraft(), Scripted(truth, len(prompt), None), PromptLookup(2)):
        tokens, _ = speculative_generate(model, prompt, 16, drafter, gamma=5, eos_token_id=truth[pos])
        assert tokens == truth[:pos + 1]
        for n in (1, 2, 7):
            assert speculative_generate(model, prompt, n, drafter, gamma=5)[0] == truth[:n]


def test_prompt_lookup_drafts_are_accepted_on_repetitive_text(model):
    prompt = [1] + [8, 9, 10, 11] * 6
    _, stats = speculative_generate(model, prompt, 16, PromptLookup(3), gamma=4)
    assert stats.drafted > 0


def test_cache_after_rollback_equals_fresh_greedy_cache(model):
    engine = Engine(model)
    prompt = PROMPTS[0]
    truth = greedy(model, prompt, 8)
    fresh, _ = prefill_logits(engine, prompt + truth[:3])  # a fresh cache holding prompt + first 3 generated tokens
    # the same position reached by verifying a draft of 5 of which 2 are accepted, then rolling back
    flight, _ = prefill_logits(engine, prompt[:-1])
    draft = truth[:2] + [(truth[2] + 1) % 97, 5, 6]
    forward_tokens(flight, [prompt[-1]] + draft)
    flight.truncate(len(prompt) + 2)
    forward_tokens(flight, [truth[2]])
    for i in range(engine.n_layers):
        assert flight.cache.length(i) == fresh.cache.length(i)
        torch.testing.assert_close(flight.cache.keys[i], fresh.cache.keys[i], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(flight.cache.values[i], fresh.cache.values[i], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("share_prefix", [False, True])
def test_routed_draft_rolls_back_above_the_shared_prefix_only(model, share_prefix):
    """Layers from the lowest skipped one up are left as found; below it, the cache holds the full
    model's own keys and values for the drafted positions, which the verify then reuses."""
    engine = Engine(model)
    prompt = PROMPTS[1]
    flight, _ = prefill_logits(engine, prompt[:-1])
    before = [(k.clone(), v.clone()) for k, v in zip(flight.cache.keys, flight.cache.values)]
    draft = RoutedDraft(SkipPlan.make(hard=[3, 4]), 0.0, share_prefix=share_prefix).propose(flight, prompt, 4)
    assert len(draft.tokens) == 4
    shared = 3 if share_prefix else 0
    for i in range(shared, engine.n_layers):
        assert torch.equal(before[i][0], flight.cache.keys[i]) and torch.equal(before[i][1], flight.cache.values[i])
    full, _ = prefill_logits(engine, prompt + draft.tokens[:-1])
    for i in range(shared):
        torch.testing.assert_close(flight.cache.keys[i], full.cache.keys[i], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(flight.cache.values[i], full.cache.values[i], rtol=1e-9, atol=1e-12)
    assert (draft.hidden is not None) == share_prefix


def test_shared_prefix_verify_runs_the_lower_layers_on_one_token_only(model):
    """With the shared prefix, layers below the lowest skipped layer see one new token per step
    after the prefill (draft steps and the verify's last token); without it, the verify feeds them
    every drafted position again."""
    seen = []
    hook = model.model.layers[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    try:
        counts = {}
        for share in (True, False):
            seen.clear()
            tokens, stats = speculative_generate(model, PROMPTS[0], 12, RoutedDraft(SkipPlan.make(hard=[3]), 0.0, share_prefix=share), 4)
            counts[share] = list(seen[1:])  # after the prefill
    finally:
        hook.remove()
    assert tokens == greedy(model, PROMPTS[0], 12) and stats.drafted > stats.steps
    assert set(counts[True]) == {1}
    assert max(counts[False]) > 1


def test_adaptive_threshold_follows_draft_and_verify_rule():
    draft = RoutedDraft(SkipPlan.make(hard=[3]), 0.8)
    for _ in range(5):
        draft.observe(drafted=4, accepted=0, gamma=4)      # poor acceptance: stop drafting earlier
    raised = draft.threshold
    assert 0.8 < raised <= 1.0
    for _ in range(10):
        draft.observe(drafted=2, accepted=2, gamma=4)      # good acceptance, stopped early: draft longer
    assert draft.threshold < raised
    lowered = draft.threshold
    draft.observe(drafted=4, accepted=4, gamma=4)          # good acceptance at full length: stay
    assert draft.threshold == pytest.approx(lowered)
    fixed = RoutedDraft(SkipPlan.make(hard=[3]), 0.8, adaptive=False)
    fixed.observe(drafted=4, accepted=0, gamma=4)
    assert fixed.threshold == 0.8


def test_prompt_lookup_agrees_with_transformers_assisted_generation(model):
    """transformers' own prompt-lookup decoding gives the same tokens as our loop (both greedy)."""
    for prompt in PROMPTS:
        ours, _ = speculative_generate(model, prompt, 16, PromptLookup(3), gamma=4)
        theirs = model.generate(torch.tensor([prompt]), prompt_lookup_num_tokens=4, max_matching_ngram_size=3,
                                max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert ours == theirs[0, len(prompt):].tolist()


def _states_at_last_position(model, prompt):
    """(cache holding the prompt, the full model's L + 1 states of its last token)."""
    engine = Engine(model)
    ids = torch.tensor([prompt])
    flight = engine.start(torch.ones_like(ids), rollback=True)
    record = Record(states=True)
    with torch.inference_mode():
        flight.run(*flight.feed(ids), record=record)
    return flight.cache, [s[0, -1] for s in record.kept_states]


def test_recorded_states_are_each_layers_input_and_the_last_output(model):
    _, states = _states_at_last_position(model, PROMPTS[0])
    out = model.model(input_ids=torch.tensor([PROMPTS[0]]), output_hidden_states=True)
    assert len(states) == len(model.model.layers) + 1
    torch.testing.assert_close(states[0], model.model.embed_tokens.weight[PROMPTS[0][-1]])
    torch.testing.assert_close(model.model.norm(states[-1]), out.last_hidden_state[0, -1])


@pytest.mark.parametrize("identity_layer", [2, 4])
def test_clasp_skips_a_layer_that_is_an_identity_first(identity_layer):
    """A layer whose attention and MLP write nothing leaves the state unchanged: with one layer to
    skip, CLaSp's programme skips it, whatever the other layers do; the real cache is left alone."""
    model = tiny_llama(dtype=torch.float64, seed=5)
    layer = model.model.layers[identity_layer]
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    for prompt in PROMPTS:
        cache, states = _states_at_last_position(model, prompt)
        before = [(k.clone(), v.clone()) for k, v in zip(cache.keys, cache.values)]
        assert clasp_layers(Engine(model), states, cache, len(prompt) - 1, 1, range(1, 6)) == [identity_layer]
        assert all(torch.equal(k, k2) and torch.equal(v, v2) for (k, v), k2, v2 in zip(before, cache.keys, cache.values))
        chosen = clasp_layers(Engine(model), states, cache, len(prompt) - 1, 3, [1, 3, identity_layer, 5])
        assert len(chosen) == 3 and identity_layer in chosen and set(chosen) <= {1, 3, identity_layer, 5}


def test_clasp_runs_each_layer_once_per_choice_on_every_candidate(model):
    """One batched call per layer: layer i sees min(i, n_skip) + 1 candidate states."""
    cache, states = _states_at_last_position(model, PROMPTS[0])
    seen = []
    hooks = [l.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0])) for l in model.model.layers]
    try:
        clasp_layers(Engine(model), states, cache, len(PROMPTS[0]) - 1, 2, range(1, 6))
    finally:
        for h in hooks:
            h.remove()
    assert seen == [1, 1, 2, 3, 3, 3]  # layer 0 may not be skipped: one candidate until layer 1 is passed


@pytest.mark.parametrize("name", ["none", "routed_skip", "clasp", "prompt_lookup", "suffix"])
def test_the_prefill_routes_the_prompt_and_the_drafter_follows_the_route(name):
    from ais.decoding.speculative import make_drafter
    from ais.model.prompts import chat_ids
    from conftest import tiny_routed_decoder, tiny_tokenizer

    tok = tiny_tokenizer()
    contexts = ["what is the capital of france", "write a story", "sum two plus two", "write code"]
    model = tiny_llama(dtype=torch.float64, seed=1)
    decoder = tiny_routed_decoder(model, tok, contexts, [0, 1, 0, 1])
    seen = []

    def drafter_for(route):
        seen.append(route.category)
        return make_drafter(name, decoder.plan_for(route.category, mode="hard"), 0.3, 2, decoder.skippable_layers())

    for context, category in zip(contexts, "abab"):
        ids = chat_ids(tok, context, 100)
        tokens, stats = speculative_generate(model, ids, 12, drafter_for, gamma=3, router=decoder)
        assert tokens == greedy(model, ids, 12) and stats.category == category == seen[-1]
        assert stats.drafter == name
    with pytest.raises(ValueError, match="same weights"):
        speculative_generate(tiny_llama(dtype=torch.float64, seed=1), ids, 4, drafter_for, router=decoder)


def test_routing_during_the_prefill_is_the_plain_prefill_bit_for_bit():
    from transformers import DynamicCache

    from conftest import tiny_routed_decoder, tiny_tokenizer

    tok = tiny_tokenizer()
    contexts = ["what is the capital of france", "write a story"]
    model = tiny_llama(dtype=torch.float32, seed=1)
    decoder = tiny_routed_decoder(model, tok, contexts, [0, 1])
    batch = left_padded([PROMPTS[0]])
    flight, logits, routes = decoder.prefill(batch, mode="full")
    plain = DynamicCache(config=model.config)
    with torch.inference_mode():
        reference = model(**batch, past_key_values=plain, use_cache=True, logits_to_keep=1).logits[:, -1]
    assert torch.equal(logits, reference) and routes[0].plan.is_empty()
    for i, layer in enumerate(plain.layers):
        assert torch.equal(flight.cache.keys[i], layer.keys) and torch.equal(flight.cache.values[i], layer.values)


def test_the_suffix_draft_takes_the_longest_match_the_nearest_replies_first_and_adapts_its_length():
    store = Datastore([[5, 6, 7, 8, 9], [1, 2, 3, 4, 40, 41], [1, 2, 3, 4, 42, 43]],
                      [[1.0, 0.0], [0.0, 1.0], [0.1, 0.9]], [0, 1, 2], {})
    near, whole = store.sources([1.0, 0.05], 1)
    assert near.text[:-1] == [5, 6, 7, 8, 9] and len(whole) == 5 + 6 + 6 + 3
    assert Datastore([], np.zeros((0, 2)), [], {}).sources([1.0, 0.0], 4) == []  # an empty datastore: the context only
    # the context [.. 2 3 4] matches "2 3 4" in both later replies; the nearest-replies source holds one of them
    drafter = SuffixDraft(store.sources([0.0, 1.0], 1), factor=2.0, min_probability=0.0)
    assert drafter.propose(None, [70, 2, 3, 4], 8).tokens == [40, 41]  # nearest first (a tie with the whole store)
    drafter = SuffixDraft(store.sources([0.0, 1.0], 0), factor=1.0, min_probability=0.0)
    assert drafter.propose(None, [70, 3, 4], 8).tokens == [40, 41]  # length 2 x factor 1; 40 occurs first
    assert SuffixDraft(store.sources(None, 0), min_probability=0.6).propose(None, [3, 4], 8).tokens == []  # 1/2 each
    # the context's own repeat wins where it is longer
    drafter = SuffixDraft(store.sources([1.0, 0.0], 1), factor=4.0, min_probability=0.0)
    assert drafter.propose(None, [11, 12, 13, 14, 15, 11, 12, 13, 14], 3).tokens == [15, 11, 12]
    assert SuffixDraft().propose(None, [1], 4).tokens == []  # a one-token context: nothing to match


def test_the_datastore_survives_saving_and_refuses_another_model(tmp_path):
    identity = {"model_type": "llama", "n_layers": 6, "hidden_size": 2, "vocab_size": 97}
    store = Datastore([[5, 6], [7]], [[1.0, 0.0], [0.0, 1.0]], [3, 9], identity)
    store.save(tmp_path / "ds")
    again = Datastore.load(tmp_path / "ds", identity)
    assert again.replies == store.replies and again.entries.tolist() == [3, 9]
    with pytest.raises(ValueError, match="n_layers=12"):
        Datastore.load(tmp_path / "ds", {**identity, "n_layers": 12})
    with pytest.raises(ValueError, match="not found"):
        Datastore.load(tmp_path / "nothing")
