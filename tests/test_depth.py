"""Per-token depth on tiny models: the batched per-row skip against a direct computation, and
both depth definitions on models whose last layers are exact identities (a known answer)."""
import numpy as np
import pytest
import torch

from ais.evaluation.depth import (first_sentences, logits_with_skips, operation_prompts, orderings, saturation_depth,
                                  summarise_depths, token_depths)
from ais.model.engine import Engine, Record
from conftest import identities, tiny_llama


def recorded_states(model, sequence):
    record = Record(states=True)
    Engine(model).forward(torch.tensor([sequence]), record=record)
    return record.kept_states

PROMPT = [1, 5, 9, 14, 22, 7, 30, 3]


def _continuation(model, n=8):
    x = torch.tensor([PROMPT])
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False, eos_token_id=None,
                         pad_token_id=0)
    return out[0, len(PROMPT):].tolist()


def _direct_logits(model, sequence, position, skipped):
    """The same quantity without cache or mask tricks: the prefix up to `position` through the model,
    the last position bypassing `skipped` (its keys and values still computed, from its input)."""
    def bypass(module, args, kwargs, out):
        hidden = args[0] if args else kwargs["hidden_states"]
        out = out.clone()
        out[:, -1] = hidden[:, -1]
        return out
    hooks = [model.model.layers[i].register_forward_hook(bypass, with_kwargs=True) for i in skipped]
    try:
        return model(input_ids=torch.tensor([sequence[:position + 1]])).logits[0, -1]
    finally:
        for h in hooks:
            h.remove()


@torch.inference_mode()
def test_rows_skip_their_own_layers_against_a_direct_computation():
    model = tiny_llama(dtype=torch.float64, seed=2)
    engine = Engine(model)
    sequence = PROMPT + _continuation(model)
    positions = list(range(len(PROMPT) - 1, len(sequence)))
    ids = torch.tensor([sequence[:-1]])
    flight = engine.start(torch.ones_like(ids))
    flight.step(ids, logits=False)
    flight.repeat_rows(len(positions))
    rng = np.random.default_rng(0)
    skip = [[i for i in range(1, 6) if rng.random() < 0.4] for _ in positions]
    skip[0] = []
    logits = logits_with_skips(engine, flight, torch.tensor(sequence)[positions], positions, skip)
    assert flight.cache.length(0) == len(sequence) - 1 == flight.length  # left as it was
    for r, q in enumerate(positions):
        direct = _direct_logits(model, sequence, q, skip[r])
        torch.testing.assert_close(logits[r], direct, rtol=1e-9, atol=1e-9)
    full = model(input_ids=torch.tensor([sequence])).logits[0, positions[0]]
    torch.testing.assert_close(logits[0], full, rtol=1e-9, atol=1e-9)  # no skip: the full model


@torch.inference_mode()
def test_saturation_is_the_first_layer_after_which_the_lens_never_changes():
    model = tiny_llama(dtype=torch.float64, seed=4)
    sequence = PROMPT + _continuation(model)
    states = recorded_states(model, sequence)
    positions = list(range(len(sequence)))
    depth = saturation_depth(Engine(model), states, positions)
    for j, q in enumerate(positions):  # brute force
        lens = [int(model.lm_head(model.model.norm(states[d][0, q])).argmax()) for d in range(1, 7)]
        assert depth[j] == min(d for d in range(1, 7) if all(t == lens[-1] for t in lens[d - 1:]))
    identity = identities(tiny_llama(dtype=torch.float64, seed=4), [3, 4, 5])
    states = recorded_states(identity, sequence)
    assert (saturation_depth(Engine(identity), states, positions) <= 3).all()  # layers 4-6 change nothing


def test_identity_layers_are_skipped_by_every_token_and_the_rest_is_measured():
    model = identities(tiny_llama(dtype=torch.float64, seed=6), [3, 4, 5])
    continuation = _continuation(model, 10)
    depths = token_depths(Engine(model), PROMPT, continuation)
    assert len(depths["needed"]) == len(continuation)
    assert (depths["skippable"] >= 3).all() and (depths["needed"] == 6 - depths["skippable"]).all()
    assert (depths["saturation"] <= 3).all()
    plain = token_depths(Engine(tiny_llama(dtype=torch.float64, seed=6)), PROMPT, continuation)
    assert ((plain["skippable"] >= 0) & (plain["skippable"] <= 5)).all()  # layer 0 always runs


def test_operation_prompts_are_seeded_and_complete():
    paragraphs = [f"Paragraph {i} about something." for i in range(5)]
    prompts = operation_prompts(paragraphs, 4, seed=3)
    assert set(prompts) == {"copy", "summarise", "continue", "repeat", "sum", "product"}
    assert all(len(v) == 4 for v in prompts.values()) and prompts == operation_prompts(paragraphs, 4, seed=3)
    assert "Paragraph 0 about something." in prompts["copy"][0]
    for prompt in prompts["sum"]:
        numbers = [int(x) for x in prompt.split("? ")[1].split(", ")]
        assert 5 <= len(numbers) <= 10 and all(10 <= x <= 99 for x in numbers)
    with pytest.raises(ValueError, match="need 9 paragraphs"):
        operation_prompts(paragraphs, 9, seed=3)


def test_summary_and_the_orderings():
    items = {op: [{"needed": np.array([base + i, base + i + 1]), "saturation": np.array([base, base])} for i in range(5)]
             for op, base in (("copy", 10), ("summarise", 20), ("continue", 30), ("repeat", 5), ("sum", 4), ("product", 3))}
    summary = summarise_depths(items, 32, seed=0)
    assert summary["copy"]["needed"] == pytest.approx(12.5) and summary["copy"]["flexidepth_fraction"] == 0.6875
    assert summary["copy"]["n_tokens"] == 10
    order = orderings(summary)
    assert order["copy < summarise < continue"] == {"by_means": True, "intervals_apart": True}
    assert order["repeat < sum < product"]["by_means"] is False


def test_paragraphs_are_cut_at_a_sentence_end():
    text = "One two three.  Four five six.\nSeven eight nine ten eleven."
    assert first_sentences(text, 40) == "One two three. Four five six."
    assert first_sentences("no sentence ends here at all", 10) == "no sentenc"
