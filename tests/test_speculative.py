"""Lossless speculative decoding: token-for-token identical to greedy, whatever the drafts."""
import pytest
import torch
from transformers import DynamicCache

from ais.decoder import plain_generate
from ais.skip import SkipPlan
from ais.speculative import NoDraft, PromptLookup, RoutedDraft, speculative_generate, truncate_cache
from conftest import left_padded, tiny_llama

PROMPTS = [[1, 5, 9, 14, 22, 7], [1, 30, 4], [1, 8, 9, 10, 11, 8, 9, 10, 11, 8, 9], [1, 11, 13, 17, 11, 13, 17, 11]]


def greedy(model, prompt, n):
    return plain_generate(model, left_padded([prompt]), n)[0].tolist()


class Scripted:
    """Proposes the true greedy continuation with a wrong token at `wrong_at` (None: all right)."""

    name = "scripted"

    def __init__(self, truth, prompt_len, wrong_at):
        self.truth, self.prompt_len, self.wrong_at = truth, prompt_len, wrong_at

    def propose(self, model, context, cache, gamma):
        done = len(context) - self.prompt_len
        draft = list(self.truth[done:done + gamma])
        if self.wrong_at is not None and self.wrong_at < len(draft):
            draft[self.wrong_at] = (draft[self.wrong_at] + 1) % 97
        return draft


@pytest.fixture(scope="module")
def model():
    return tiny_llama(dtype=torch.float64, seed=3)


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("drafter", [NoDraft(), PromptLookup(2), PromptLookup(3),
                                     RoutedDraft(SkipPlan.make(hard=[4]), 0.0), RoutedDraft(SkipPlan.make(hard=[2, 3]), 0.5)],
                         ids=lambda d: f"{d.name}")
@pytest.mark.parametrize("gamma", [1, 3, 6])
def test_identical_to_greedy_for_every_drafter(model, prompt, drafter, gamma):
    expected = greedy(model, prompt, 20)
    tokens, stats = speculative_generate(model, prompt, 20, drafter, gamma)
    assert tokens == expected
    assert stats.accepted <= stats.drafted and stats.steps + stats.accepted == 20


@pytest.mark.parametrize("wrong_at", [None, 0, 1, 2])
def test_accepted_rejected_first_and_midway(model, wrong_at):
    prompt = PROMPTS[0]
    truth = greedy(model, prompt, 24)
    tokens, stats = speculative_generate(model, prompt, 24, Scripted(truth, len(prompt), wrong_at), gamma=4)
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
    prompt = PROMPTS[0]
    truth = greedy(model, prompt, 8)
    # a fresh cache holding prompt + first 3 generated tokens
    fresh = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([prompt + truth[:3]]), past_key_values=fresh, use_cache=True)
    # the same position reached by verifying a draft of 5 of which 2 are accepted, then rolling back
    cache = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([prompt[:-1]]), past_key_values=cache, use_cache=True)
    draft = truth[:2] + [(truth[2] + 1) % 97, 5, 6]
    model(input_ids=torch.tensor([[prompt[-1]] + draft]), past_key_values=cache, use_cache=True)
    truncate_cache(cache, len(prompt) + 2)
    model(input_ids=torch.tensor([[truth[2]]]), past_key_values=cache, use_cache=True)
    assert cache.get_seq_length() == fresh.get_seq_length()
    for a, b in zip(cache.layers, fresh.layers):
        torch.testing.assert_close(a.keys, b.keys, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(a.values, b.values, rtol=1e-9, atol=1e-12)


def test_routed_draft_leaves_cache_as_it_found_it(model):
    prompt = PROMPTS[1]
    cache = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([prompt[:-1]]), past_key_values=cache, use_cache=True)
    before = [(l.keys.clone(), l.values.clone()) for l in cache.layers]
    RoutedDraft(SkipPlan.make(hard=[3, 4]), 0.0).propose(model, prompt, cache, 4)
    for (k, v), layer in zip(before, cache.layers):
        assert torch.equal(k, layer.keys) and torch.equal(v, layer.values)


def test_prompt_lookup_agrees_with_transformers_assisted_generation(model):
    """transformers' own prompt-lookup decoding gives the same tokens as our loop (both greedy)."""
    for prompt in PROMPTS:
        ours, _ = speculative_generate(model, prompt, 16, PromptLookup(3), gamma=4)
        theirs = model.generate(torch.tensor([prompt]), prompt_lookup_num_tokens=4, max_matching_ngram_size=3,
                                max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert ours == theirs[0, len(prompt):].tolist()
