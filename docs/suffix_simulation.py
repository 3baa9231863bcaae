"""What the suffix drafter's settings and datastore size buy, without a clock: each lossless test
prompt's greedy reply (transformers `generate`, bfloat16, 32 tokens) is decoded again by a simulated
speculative loop (greedy verification accepts exactly the draft's agreeing prefix, so tokens per
verify are exact), and its time is estimated from the measured cost of a verify of n tokens
(`ais.evaluation.lossless.verify_cost`). Python overheads are not in the estimate: the lossless
stage measures the real thing. transformers' prompt lookup is simulated as its candidate generator
drafts (the last 2-gram, else 1-gram, first match, up to 8 tokens).

    python docs/suffix_simulation.py [datastore folder ...]   # default: data/datastore

Run from the repository root after `dvc repro lossless`. Prints one line per policy and datastore."""
import json
import sys
from pathlib import Path

from ais.api import load
from ais.decoding.datastore import FILE as DATASTORE, Datastore
from ais.decoding.speculative import SuffixDraft
from ais.evaluation.lossless import generate_baseline, verify_cost
from ais.model.prompts import chat_ids
from ais.params import get
from ais.routing.corpus import prompts_by_category, read_corpus


def prompt_lookup(context: list[int], gamma: int, ngram: int = 2) -> list[int]:
    for n in range(ngram, 0, -1):
        tail = context[-n:]
        for i in range(len(context) - n):
            if context[i:i + n] == tail:
                return context[i + n:i + n + gamma]
    return []


def simulate(rows: list[dict], drafter_for, gamma: int, verify_ms: dict[int, float]) -> dict:
    """Per split: tokens per verify, the estimated speedup over one-token steps, draft acceptance."""
    out = {}
    for r in rows:
        draft, context, reference = drafter_for(r), list(r["ids"]), r["reference"]
        i = steps = drafted = accepted = 0
        ms = 0.0
        while i < len(reference):
            tokens = draft(context, gamma)[:len(reference) - i - 1]
            a = next((j for j, t in enumerate(tokens) if t != reference[i + j]), len(tokens))
            context += reference[i:i + a + 1]
            i, steps, ms, drafted, accepted = i + a + 1, steps + 1, ms + verify_ms[len(tokens) + 1], drafted + len(tokens), accepted + a
        s = out.setdefault(r["split"], [0, 0, 0.0, 0, 0, 0.0])
        for k, v in enumerate((len(reference), steps, ms, drafted, accepted, len(reference) * verify_ms[1])):
            s[k] += v
    return {split: {"tokens_per_verify": round(t / st, 3), "estimated_speedup": round(base / ms, 3),
                    "acceptance": round(ac / max(dr, 1), 3)} for split, (t, st, ms, dr, ac, base) in out.items()}


def suffix(store: Datastore, factor: float, probability: float, neighbours: int):
    def drafter_for(r):
        d = SuffixDraft(store.sources(r["embedding"], neighbours), factor, probability)
        return lambda context, gamma: d.propose(None, context, gamma).tokens
    return drafter_for


if __name__ == "__main__":
    system = load(mode="hard")
    params, tokenizer = system.params, system.tokenizer
    n = get(params, "lossless.n_per_category")
    corpus = read_corpus(Path("data/corpus.jsonl"))
    held = prompts_by_category(corpus, "heldout", 2 * n)
    test = {"heldout": {c: p[n:] for c, p in held.items()}, "heldout_task": prompts_by_category(corpus, "heldout_task", n)}
    rows = []
    for split, prompts in test.items():
        for category, texts in sorted(prompts.items()):
            for text in texts:
                ids = chat_ids(tokenizer, text, 1500)
                reference, _ = generate_baseline(system.model, ids, get(params, "lossless.max_new_tokens"),
                                                 tokenizer.eos_token_id)
                rows.append({"split": split, "ids": ids, "reference": reference,
                             "embedding": system.decoder.route_prompts(tokenizer, [text], mode="full")[0].embedding})
    gamma = get(params, "lossless.gamma")
    verify_ms = verify_cost(system.model, rows[0]["ids"], 2 * gamma + 1)
    print("prompt_lookup (transformers, n=8)", json.dumps(simulate(rows, lambda r: prompt_lookup, gamma, verify_ms)))
    for folder in sys.argv[1:] or [DATASTORE]:
        store = Datastore.load(folder, system.topo.identity)
        for factor, probability, neighbours, g in ((2.0, 0.1, 8, gamma), (2.0, 0.1, 0, gamma), (8.0, 0.0, 8, gamma),
                                                   (8.0, 0.0, 8, 2 * gamma)):
            print(f"suffix, {len(store)} replies, factor {factor}, probability {probability}, neighbours {neighbours}, "
                  f"gamma {g}", json.dumps(simulate(rows, suffix(store, factor, probability, neighbours), g, verify_ms)))
