"""The CUDA path: the same guarantees on a GPU (tiny models travel, real weights need not). Skipped
where no CUDA device exists; run them on a GPU machine with `pytest tests/test_cuda.py`."""
import pytest
import torch

from ais.model.plan import NEVER, DepthGate
from ais.decoding.greedy import decode, generate, prefill
from ais.decoding.speculative import ClaspDraft, NoDraft, PromptLookup, RoutedDraft, speculative_generate
from ais.device import pick_device, pick_dtype, synchronize
from ais.model.engine import Engine
from ais.model.plan import SkipPlan
from ais.model.prompts import encode_prompts
from conftest import FAMILIES, left_padded, tiny_model, tiny_routed_decoder, tiny_tokenizer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
ROWS = [[1, 5, 9, 14, 22, 7], [1, 30, 4], [1, 8, 8, 8, 61, 3, 12, 40, 42]]


def on_cuda(batch):
    return {k: v.cuda() for k, v in batch.items()}


def test_auto_picks_cuda_and_bfloat16():
    device = pick_device("auto")
    assert device.type in ("cuda", "mps") and (device.type != "cuda" or pick_dtype("auto", device) == torch.bfloat16)
    synchronize(torch.device("cuda"))


@pytest.mark.parametrize("family", FAMILIES)
def test_plans_caches_and_decoders_on_cuda(family):
    model = tiny_model(family, dtype=torch.float32, seed=2).cuda()
    engine, batch = Engine(model), on_cuda(left_padded(ROWS))
    pos = (batch["attention_mask"].cumsum(-1) - 1).masked_fill(batch["attention_mask"] == 0, 1)
    with torch.inference_mode():
        reference = model(**batch, position_ids=pos, logits_to_keep=1).logits[:, -1, :]
    assert torch.equal(prefill(engine, batch)[1], reference)
    mixed = [SkipPlan.make(hard=[2, 4]), SkipPlan.make(soft={3: 0.5}), SkipPlan.make(attention=[2], mlp=[5])]
    together = generate(engine, batch, 8, mixed)
    for i, (row, plan) in enumerate(zip(ROWS, mixed)):
        assert torch.equal(together[i], generate(engine, on_cuda(left_padded([row])), 8, [plan])[0])
    greedy = generate(engine, on_cuda(left_padded([ROWS[0]])), 12)[0].tolist()
    for drafter in (NoDraft(), PromptLookup(2), RoutedDraft(SkipPlan.make(hard=[3, 4]), 0.3), ClaspDraft(2, [2, 3, 4, 5], 0.3)):
        assert speculative_generate(engine, ROWS[0], 12, drafter, gamma=4)[0] == greedy, drafter.name
    flight, logits = prefill(engine, batch)
    assert torch.equal(decode(flight, logits.argmax(-1), 8, gate=NEVER)[0], generate(engine, batch, 8))
    flight, logits = prefill(engine, batch)
    ids, depth = decode(flight, logits.argmax(-1), 8, gate=DepthGate(0.5, 2))
    assert ids.is_cuda and depth.is_cuda


def test_routed_decoder_on_cuda():
    model, tok = tiny_model("llama", dtype=torch.float32, seed=5), tiny_tokenizer()
    contexts = ["what is the capital of france", "write a story", "sum two plus two", "write code"]
    decoder = tiny_routed_decoder(model, tok, contexts, [0, 1, 0, 1])
    model.cuda()
    batch = encode_prompts(tok, contexts, "cuda")
    out, routes, _ = decoder.generate(batch, 6)
    for i, route in enumerate(routes):
        assert torch.equal(out[i], generate(Engine(model), encode_prompts(tok, [contexts[i]], "cuda"), 6, [route.plan])[0])
