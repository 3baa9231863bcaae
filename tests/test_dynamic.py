"""Per-token depth (mode `dynamic`) on tiny models: with the gate never firing it is plain greedy
decoding bit for bit; identity layers are left out and change nothing; a skipped layer's keys and
values are the layer's own, computed from its input; cached = uncached; teacher forcing = generation."""
import pytest
import torch

from ais.model.plan import NEVER, DepthGate
from ais.decoding.greedy import decode, generate, prefill
from ais.evaluation.quality import Reference, decode_gated
from ais.model.engine import Engine
from conftest import identities, left_padded, tiny_llama


def dynamic_generate(model, batch, n, gate, eos_token_id=None):
    flight, logits = prefill(Engine(model), batch)
    return decode(flight, logits.argmax(-1), n, eos_token_id, gate=gate)


def plain_generate(model, batch, n, eos_token_id=None):
    return generate(Engine(model), batch, n, eos_token_id=eos_token_id)

PROMPTS = [[1, 5, 9, 14, 22, 7, 30, 3], [1, 40, 41, 12], [1, 8, 8, 60, 61, 62]]


def test_a_gate_that_never_fires_is_plain_greedy_decoding_bit_for_bit():
    model = tiny_llama(seed=3)
    batch = left_padded(PROMPTS)
    ids, depth = dynamic_generate(model, batch, 10, NEVER)
    assert torch.equal(ids, plain_generate(model, batch, 10))
    assert (depth == 6).all()
    one = {"input_ids": torch.tensor([PROMPTS[0]]), "attention_mask": torch.ones(1, len(PROMPTS[0]), dtype=torch.long)}
    reference = model.generate(**one, max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert dynamic_generate(model, one, 10, NEVER)[0][0].tolist() == reference[0, len(PROMPTS[0]):].tolist()


def test_identity_layers_at_the_end_are_skipped_and_change_nothing():
    model = identities(tiny_llama(dtype=torch.float64, seed=5), [3, 4, 5])
    batch = left_padded(PROMPTS)
    ids, depth = dynamic_generate(model, batch, 10, DepthGate(threshold=1.0 - 1e-9, min_layer=1))
    assert torch.equal(ids, plain_generate(model, batch, 10))
    assert (depth[:, 1:] <= 4).all()  # layer 3 runs (the gate sees it changes nothing), 4 and 5 are skipped
    assert (depth[:, 0] == 6).all()  # the first token comes from the full prefill


def test_min_layer_keeps_the_first_layers():
    model = identities(tiny_llama(dtype=torch.float64, seed=5), [1, 2, 3, 4, 5])
    _, depth = dynamic_generate(model, left_padded(PROMPTS), 6, DepthGate(threshold=0.5, min_layer=4))
    assert (depth[:, 1:] == 4).all()
    _, depth = dynamic_generate(model, left_padded(PROMPTS), 6, DepthGate(threshold=0.5, min_layer=1))
    assert (depth[:, 1:] <= 2).all()  # exits after layer 1 (identity) at the latest


def _uncached_dynamic(model, prompt: list[int], n_new: int, gate: DepthGate) -> tuple[list[int], list[int]]:
    """The same decoding without a cache: every step runs the whole sequence; a generated position
    keeps its state from its exit on (its keys and values still computed, from that state)."""
    n_layers = model.config.num_hidden_layers
    sequence, exits, depths = list(prompt), {}, []
    for step in range(n_new):
        last = len(sequence) - 1
        state = {"running": step > 0}

        def hook(idx):
            def after(module, args, kwargs, out):
                hidden = args[0] if args else kwargs["hidden_states"]
                out = out.clone()
                for p, e in exits.items():
                    if idx > e and gate.skippable(idx):
                        out[:, p] = hidden[:, p]
                if step > 0:
                    if not state["running"] and gate.skippable(idx):
                        out[:, last] = hidden[:, last]
                    elif state["running"] and idx + 1 >= gate.min_layer and idx + 1 < n_layers:
                        cos = torch.cosine_similarity(hidden[0, last], out[0, last], dim=-1)
                        if cos >= gate.threshold:
                            state["running"] = False
                            exits[last] = idx
                return out
            return after

        hooks = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(model.model.layers)]
        try:
            logits = model(input_ids=torch.tensor([sequence]), use_cache=False).logits[0, -1]
        finally:
            for h in hooks:
                h.remove()
        if step > 0 and last not in exits:
            exits[last] = n_layers - 1
        ran = n_layers - sum(gate.skippable(i) for i in range(exits.get(last, n_layers - 1) + 1, n_layers))
        depths.append(ran if step > 0 else n_layers)
        sequence.append(int(logits.argmax()))
    return sequence[len(prompt):], depths


@pytest.mark.parametrize("candidates", [None, (2, 4)])
@pytest.mark.parametrize("threshold", [0.2, 0.6, 0.9])
def test_cached_and_uncached_dynamic_generation_agree(threshold, candidates):
    model = tiny_llama(dtype=torch.float64, seed=7)
    gate = DepthGate(threshold=threshold, min_layer=2, candidates=candidates)
    prompt = PROMPTS[0]
    ids, depth = dynamic_generate(model, {"input_ids": torch.tensor([prompt]),
                                          "attention_mask": torch.ones(1, len(prompt), dtype=torch.long)}, 8, gate)
    tokens, depths = _uncached_dynamic(model, prompt, 8, gate)
    assert ids[0].tolist() == tokens and depth[0].tolist() == depths
    assert min(depths[1:]) < 6 or threshold == 0.9  # the gate fired somewhere (the test is not vacuous)


def test_teacher_forced_steps_are_the_generation_steps():
    model = tiny_llama(dtype=torch.float64, seed=7)
    gate = DepthGate(threshold=0.6, min_layer=2)
    batch = left_padded(PROMPTS)
    ids, depth = dynamic_generate(model, batch, 6, gate)
    full = {"input_ids": torch.cat([batch["input_ids"], ids], 1),
            "attention_mask": torch.cat([batch["attention_mask"], torch.ones_like(ids)], 1)}
    start = batch["input_ids"].shape[1] - 1
    ref = Reference(full, slice(start, start + 6), None, torch.ones(3, 6))
    logprobs, forced_depth = decode_gated(Engine(model), ref, gate)
    assert torch.equal(logprobs.argmax(-1), ids) and torch.equal(forced_depth, depth)


def test_an_exited_token_skips_only_the_candidates():
    model = identities(tiny_llama(dtype=torch.float64, seed=5), [2, 3, 4])
    batch = left_padded(PROMPTS)
    ids, depth = dynamic_generate(model, batch, 8, DepthGate(threshold=1.0 - 1e-9, min_layer=2, candidates=(3, 5)))
    assert (depth[:, 1:] >= 4).all()  # layer 5 is skipped only where a token exited before it; 0, 1, 2, 4 always run
    _, calm = dynamic_generate(model, batch, 8, DepthGate(threshold=1.0 - 1e-9, min_layer=2))
    assert (calm[:, 1:] == 3).all()  # CALM: exits after layer 2 (an identity), skips 3, 4, 5
    with pytest.raises(ValueError, match="candidates"):
        DepthGate(threshold=0.9, min_layer=3, candidates=(2,))


def test_bad_gates_are_refused():
    with pytest.raises(ValueError, match="threshold"):
        DepthGate(threshold=0)
    with pytest.raises(ValueError, match="min_layer"):
        DepthGate(threshold=0.9, min_layer=0)


def test_eos_stops_a_row_and_pads_it():
    model = tiny_llama(seed=3)
    batch = left_padded(PROMPTS)
    ids, _ = dynamic_generate(model, batch, 8, NEVER)
    eos = int(ids[0, 2])
    stopped, depth = dynamic_generate(model, batch, 8, NEVER, eos_token_id=eos)
    assert torch.equal(stopped, plain_generate(model, batch, 8, eos_token_id=eos))
    row = stopped[0].tolist()
    assert row[:3] == ids[0, :3].tolist() and all(t == 0 for t in row[3:]) and (depth[0, 3:] == 0).all()


def test_the_dynamic_overheads_are_fractions_of_the_layer_they_stand_in_for():
    from ais.evaluation.frontier import dynamic_overheads
    from conftest import tiny_tokenizer

    model, tok = tiny_llama(dtype=torch.float32, seed=3), tiny_tokenizer()
    costs = dynamic_overheads(Engine(model), tok, "a b c d", 1, warmup=1, repeats=3)
    assert costs["layer_ms"] > 0 and costs["fill_kv_ms"] > 0 and costs["gate_ms"] > 0 and costs["layer_index"] == 1
    assert costs["fill_kv_fraction"] == pytest.approx(costs["fill_kv_ms"] / costs["layer_ms"], rel=0.02)
