"""What the suffix drafter's settings and datastore size buy, without a clock: each lossless test
prompt's greedy reply (transformers `generate`, bfloat16, 32 tokens) is decoded again by a simulated
speculative loop (greedy verification accepts exactly the draft's agreeing prefix, so tokens per
verify are exact), and its time is estimated from the measured cost of a verify of n tokens
(`ais.evaluation.lossless.verify_cost`). Python overheads are not in the estimate: the lossless
stage measures the real thing. Each suffix setting is compared with this project's prompt-lookup
drafter (`lossless.ngram`; it ran at 0.996 [0.946, 1.057] of transformers' prompt lookup in the
lossless stage at 711d24c): the pooled ratio of estimated speeds with its paired bootstrap interval
over prompts, and each suffix setting's pooled estimate over the first one's (the first datastore
given, SuffixDecoding's rules), the same way.

    python docs/suffix_simulation.py [datastore folder ...]   # default: data/datastore

Run from the repository root after `dvc repro lossless`. Prints one line per policy and datastore."""
import json
import sys
from pathlib import Path

from ais.api import load
from ais.decoding.datastore import FILE as DATASTORE, Datastore
from ais.decoding.speculative import PromptLookup, SuffixDraft
from ais.evaluation.lossless import generate_baseline, verify_cost
from ais.evaluation.statistics import ratio_of_rates_interval
from ais.model.prompts import chat_ids
from ais.params import get
from ais.routing.corpus import prompts_by_category, read_corpus


def simulate(rows: list[dict], drafter_for, gamma: int, verify_ms: dict[int, float]) -> list[dict]:
    """Per prompt: reply tokens, verifies, estimated milliseconds, drafted and accepted tokens."""
    out = []
    for r in rows:
        draft, context, reference = drafter_for(r), list(r["ids"]), r["reference"]
        i = steps = drafted = accepted = 0
        ms = 0.0
        while i < len(reference):
            tokens = draft(context, gamma)[:len(reference) - i - 1]
            a = next((j for j, t in enumerate(tokens) if t != reference[i + j]), len(tokens))
            context += reference[i:i + a + 1]
            i, steps, ms = i + a + 1, steps + 1, ms + verify_ms[len(tokens) + 1]
            drafted, accepted = drafted + len(tokens), accepted + a
        out.append({"split": r["split"], "tokens": len(reference), "steps": steps, "ms": ms, "drafted": drafted,
                    "accepted": accepted})
    return out


def ratio(mine: list[dict], base: list[dict]) -> str:
    """The pooled ratio of estimated speeds, mine over base's, with its paired bootstrap interval."""
    r = ratio_of_rates_interval([r["tokens"] for r in mine], [r["ms"] for r in mine],
                                [r["tokens"] for r in base], [r["ms"] for r in base], seed=0)
    return f"{r.mean:.3f} [{r.low:.3f}, {r.high:.3f}]"


def summary(mine: list[dict], base: list[dict]) -> dict:
    """Per split and pooled: tokens per verify, acceptance, and the estimated speed over `base`'s."""
    out = {}
    for split in sorted({r["split"] for r in mine}) + ["pooled"]:
        a = [r for r in mine if split in ("pooled", r["split"])]
        b = [r for r in base if split in ("pooled", r["split"])]
        out[split] = {"tokens_per_verify": round(sum(r["tokens"] for r in a) / sum(r["steps"] for r in a), 3),
                      "acceptance": round(sum(r["accepted"] for r in a) / max(1, sum(r["drafted"] for r in a)), 3),
                      "vs_prompt_lookup": ratio(a, b)}
    return out


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
    ngram = get(params, "lossless.ngram")
    base = simulate(rows, lambda r: (lambda context, g: PromptLookup(ngram).propose(None, context, g).tokens), gamma,
                    verify_ms)
    print(f"prompt lookup (this project's drafter, n-gram {ngram})", json.dumps(summary(base, base)))
    first = None
    for folder in sys.argv[1:] or [DATASTORE]:
        store = Datastore.load(folder, system.topo.identity)
        for factor, probability, neighbours, g in ((2.0, 0.1, 8, gamma), (2.0, 0.1, 0, gamma), (8.0, 0.0, 8, gamma),
                                                   (8.0, 0.0, 8, 2 * gamma)):
            mine = simulate(rows, suffix(store, factor, probability, neighbours), g, verify_ms)
            first = first or mine
            print(f"suffix, {len(store)} replies, factor {factor}, probability {probability}, neighbours {neighbours}, "
                  f"gamma {g}", json.dumps({**summary(mine, base), "pooled_vs_first_suffix": ratio(mine, first)}))
