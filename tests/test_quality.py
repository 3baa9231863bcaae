"""Quality metrics against the full model: zero for no skip, each row scored under its own plan in
one pass as it is alone, and the validate conditions' budgets."""
import torch

from ais.evaluation.quality import compare_logprobs, full_terms, make_reference, score
from ais.evaluation.validation import conditions
from ais.methods import make
from ais.model.engine import Engine
from ais.model.plan import NO_SKIP, SkipPlan
from conftest import tiny_llama, tiny_routed_decoder, tiny_tokenizer

PROMPTS = ["what is the capital of france", "write a story", "add two plus two number", "sum"]


def test_no_skip_has_zero_kl_and_full_agreement():
    engine, tok = Engine(tiny_llama(dtype=torch.float64)), tiny_tokenizer()
    ref = make_reference(engine, tok, PROMPTS, n_continuation=5)
    assert ref.full_logprobs.shape[:2] == (4, 5)
    for protocol in ("forced", "decode"):
        scores = score(engine, ref, [NO_SKIP] * 4, protocol)
        assert (scores["kl"] < 1e-9).all() and (scores["top1"] == 1).all() and (scores["top5"] == 1).all()
        skipped = score(engine, ref, [SkipPlan.make(hard=[1, 2, 3])] * 4, protocol)
        assert (skipped["kl"] > 1e-4).all() and skipped["top1"].mean() < 1


def test_rows_of_mixed_plans_score_as_they_do_under_one_plan():
    engine, tok = Engine(tiny_llama(dtype=torch.float64)), tiny_tokenizer()
    ref = make_reference(engine, tok, PROMPTS, n_continuation=4)
    plan = SkipPlan.make(hard=[2, 4])
    whole = score(engine, ref, [plan] * 4)
    mixed = score(engine, ref, [plan, NO_SKIP, plan, SkipPlan.make(attention=[3])])
    alone = score(engine, ref.rows([3]), [SkipPlan.make(attention=[3])])
    for i in (0, 2):
        assert abs(mixed["kl"][i] - whole["kl"][i]) < 1e-9 and mixed["top1"][i] == whole["top1"][i]
    assert mixed["kl"][1] < 1e-9 and abs(mixed["kl"][3] - alone["kl"][0]) < 1e-9


def test_the_pivot_control_may_skip_the_routers_layers_and_the_global_plan_may_not():
    model, tok = tiny_llama(), tiny_tokenizer()
    prompts = ["what is the capital of france", "write a story"]
    decoder = tiny_routed_decoder(model, tok, prompts, [0, 1])  # pivot 2; pooled importance lowest at 3, then 4
    decoder.topo.global_importance[1] = 0.0  # the router's layer 1 is now the least important
    routes = decoder.route_prompts(tok, prompts)
    methods = {n: make(n, decoder.setup) for n in ("global", "global_any_layer", "oracle")}
    plans = conditions(decoder, methods, decoder.requests(routes, prompts, truth=["b", "a"]), [r.plan for r in routes])
    assert plans["global"][0] == SkipPlan.make(hard=[3]) and plans["global_any_layer"][0] == SkipPlan.make(hard=[1])
    assert plans["oracle"] == [SkipPlan.make(hard=[3]), SkipPlan.make(hard=[4])]  # b skips 3, a skips 4
    assert plans["routed_soft"] == [SkipPlan.soft_of(p.layers, 0.6) for p in plans["routed"]]


def test_the_early_half_cut_to_its_columns_scores_as_the_whole_reference_masked_to_it():
    from ais.evaluation.quality import Reference, decode_logprobs, halves

    engine, tok = Engine(tiny_llama(dtype=torch.float64, seed=2)), tiny_tokenizer()
    ref = make_reference(engine, tok, PROMPTS, n_continuation=6)
    ref.full_logprobs, ref.protocol = decode_logprobs(engine, ref, None), "decode"
    plans = [SkipPlan.make(hard=[2, 4]), SkipPlan.make(hard=[3])]
    for protocol in ("forced", "decode"):
        ref.protocol = protocol
        masked = Reference(ref.batch, ref.columns, ref.full_logprobs, halves(ref.scored)["early"], engine, protocol)
        cut = ref.restricted("early")
        assert cut.columns.stop - cut.columns.start == ref.scored.shape[1] // 2
        for a, b in zip(masked.score(plans), cut.score(plans)):
            assert abs(a["top1"] - b["top1"]) < 1e-12 and abs(a["kl"] - b["kl"]) < 1e-9


def test_a_stored_reference_scores_every_plan_as_the_reference_computed_in_place(tmp_path):
    """The reference stage's groups, saved and read back, give the scoring stages what computing the
    reference themselves gives, bit for bit, in both protocols (the 15-minute run's quality guarantee)."""
    from ais.evaluation.references import References, build, save
    engine, tok = Engine(tiny_llama(seed=3)), tiny_tokenizer()
    groups = {"validate/heldout/a": (PROMPTS, 4, ("forced",)), "frontier/heldout/0": (PROMPTS, 4, ("decode",))}
    save(tmp_path / "reference", build(engine, tok, groups, progress=False), groups, None, engine)
    stored = References(tmp_path / "reference", engine)
    plans = [SkipPlan.make(hard=[2, 4]), NO_SKIP, SkipPlan.make(attention=[3]), SkipPlan.soft_of([1, 5], 0.7)]
    for group, protocol in (("validate/heldout/a", "forced"), ("frontier/heldout/0", "decode")):
        here, read = make_reference(engine, tok, PROMPTS, 4, protocol), stored.get(group, PROMPTS, protocol)
        assert torch.equal(here.batch["input_ids"], read.batch["input_ids"]) and torch.equal(here.scored, read.scored)
        assert torch.equal(here.full_logprobs, read.full_logprobs) and here.columns == read.columns
        a, b = score(engine, here, plans, protocol), score(engine, read, plans, protocol)
        assert all((a[k] == b[k]).all() for k in a)


def test_scores_against_ungathered_rows_and_column_blocks_are_the_gathered_ones_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    full = torch.log_softmax(3 * torch.randn(5, 4, 40000, generator=generator), -1)  # a vocabulary the CPU splits
    other = torch.log_softmax(3 * torch.randn(12, 4, 40000, generator=generator), -1)
    scored = (torch.rand(12, 4, generator=generator) > 0.2).float()
    for members in (torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4]),   # runs of a repeated row (a fan-out)
                    torch.tensor([3, 4, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4]),   # runs of consecutive rows (importance)
                    torch.tensor([4, 2, 2, 0, 1, 1, 1, 3, 0, 4, 4, 2])):  # anything else
        plain = compare_logprobs(full[members], other, scored, split=True)
        for blocks in (other, [other[:, :1], other[:, 1:]], [other[:, :2], other[:, 2:3], other[:, 3:]]):
            fast = compare_logprobs(full, blocks, scored, split=True, terms=full_terms(full), members=members)
            assert plain.keys() == fast.keys()
            for key in plain:
                assert torch.equal(plain[key].nan_to_num(-1.0), fast[key].nan_to_num(-1.0)), key


def test_a_references_prompt_is_prefilled_once_and_every_scoring_pass_goes_on_from_its_own_copy():
    engine, tok = Engine(tiny_llama(dtype=torch.float64, seed=3)), tiny_tokenizer()
    ref = make_reference(engine, tok, ["what is the capital", "write a story about", "sum"], 4, "decode")
    plans = [SkipPlan.make(hard=[2]), SkipPlan.make(hard=[1, 3]), SkipPlan.make(attention=[2])]
    first = score(engine, ref, plans, "decode")
    flight, _ = ref.prefilled(engine)
    held = [k.clone() for k in flight.cache.keys]
    again = score(engine, ref, plans, "decode")
    assert len(ref.prefills) == 1  # one prefill for every pass
    assert all(torch.equal(a, b) for a, b in zip(held, ref.prefills[engine][0].cache.keys))  # never written into
    fresh = make_reference(engine, tok, ["what is the capital", "write a story about", "sum"], 4, "decode")
    for key in first:
        assert torch.equal(torch.as_tensor(first[key]), torch.as_tensor(again[key]))
        assert torch.equal(torch.as_tensor(first[key]), torch.as_tensor(score(engine, fresh, plans, "decode")[key]))
