"""Building the plan-defined map (stages `plan_search` and `plan_map`): categories defined by which plan works.

1. Map prompts (`plan_map.n_per_category` of each category, `ais.routing.corpus.sample_per_category`) get the per-prompt
   oracle's own search (stage `plan_search`, so that a sweep of K reuses it) (`prompt_oracle`: greedy removal on the prompt's own greedy continuation,
   decode protocol), to the largest budget; its removal order gives the plan at every smaller one.
2. Per budget, the searched plans (sets of layers) are clustered by k-means on their layer
   indicators into K candidate plans (a candidate: the n layers its members skip most often).
3. Each searched entry is labelled with the candidate that keeps the most top-1 agreement on its own
   continuation (ties: the smaller KL, then the lower index), and the clustering's quality is that
   agreement beside the global plan's and the entry's own searched plan's on the same prompts
   (in-sample on the map prompts: how much a candidate keeps of what the search found; whether the
   router finds it for a new prompt is the frontier's out-of-sample question).
"""
from __future__ import annotations

import time

import numpy as np
import torch
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from ais.evaluation.quality import make_reference, score_conditions
from ais.evaluation.references import frontier_chunks
from ais.evaluation.statistics import mean_interval, paired_difference, rounded
from ais.methods import Request, make
from ais.routing.candidates import CandidatePlans


def cluster_plans(plans: list[list[int]], n: int, k: int, n_layers: int, seed: int) -> np.ndarray:
    """K candidate plans of n layers each (K x n, sorted rows) from searched plans: k-means on the
    plans' layer indicators (K at most the number of distinct plans), each candidate the n layers
    its cluster's members skip most often (ties: the lower layer). Deterministic on any thread count."""
    indicators = np.zeros((len(plans), n_layers))
    for row, layers in enumerate(plans):
        indicators[row, list(layers)] = 1.0
    k = max(1, min(k, len({tuple(sorted(p)) for p in plans})))
    with threadpool_limits(1):
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(indicators).labels_
    out = []
    for c in range(k):
        share = indicators[labels == c].mean(0)
        order = sorted(range(n_layers), key=lambda layer: (-share[layer], layer))
        candidate = sorted(order[:n])
        if candidate not in out:  # two clusters may agree on their top layers
            out.append(candidate)
    return np.array(out, dtype=np.int64)


def _references(engine, tokenizer, prompts: list[str], categories: list[str], n_continuation: int,
                batch_size: int) -> list[tuple[list[int], object]]:
    """(rows, the full model's decode-protocol reference) of the prompts, `batch_size` at a time,
    categories mixed as on the frontier."""
    by_category: dict[str, list[str]] = {}
    for prompt, category in zip(prompts, categories):
        by_category.setdefault(category, []).append(prompt)
    position = {(c, i): j for j, (c, i) in enumerate(_positions(categories))}
    return [([position[(c, i)] for c, i, _ in chunk],
             make_reference(engine, tokenizer, [p for *_, p in chunk], n_continuation, "decode"))
            for chunk in frontier_chunks(by_category, batch_size)]


@torch.inference_mode()
def search_plans(decoder, tokenizer, prompts: list[str], categories: list[str], budget: int, n_continuation: int,
                 batch_size: int = 18, progress: bool = True) -> tuple[list[list[int]], float]:
    """Each prompt's removal order from the per-prompt oracle's search to `budget` layers (the plan at
    any smaller budget is its beginning; stage `plan_search`), and the search's seconds."""
    engine, setup = decoder.engine, decoder.setup
    oracle = make("prompt_oracle", setup)
    searched: dict[int, list[int]] = {}
    started = time.perf_counter()
    for rows, ref in tqdm(_references(engine, tokenizer, prompts, categories, n_continuation, batch_size),
                          desc="plan search", unit="batch", disable=not progress):
        requests = [Request(p, reference=ref.rows([j]), key=p) for j, p in enumerate(prompts[r] for r in rows)]
        oracle.plans(requests, setup.budget(budget))  # the rows' searches advance together
        for j, request in zip(rows, requests):
            searched[j] = [int(layer) for layer in oracle.removal_order(request)]
    return [searched[j] for j in range(len(prompts))], time.perf_counter() - started


@torch.inference_mode()
def build_plan_map(decoder, tokenizer, prompts: list[str], categories: list[str], entries: list[int],
                   embeddings: np.ndarray, searched: list[list[int]], budgets: list[int], k: int, n_continuation: int,
                   seed: int, batch_size: int = 18) -> tuple[CandidatePlans, dict]:
    """The plan map of the searched entries (their prompts, categories, map indices, router embeddings
    and removal orders) at each budget, and its report: per budget the candidates, their sizes, and the
    top-1 agreement of own candidate, global plan and own search."""
    engine, setup = decoder.engine, decoder.setup
    glob = make("global", setup)
    references = _references(engine, tokenizer, prompts, categories, n_continuation, batch_size)
    labels, candidates, report = {}, {}, {}
    for n in sorted(budgets):
        plans = [searched[j][:n] for j in range(len(prompts))]
        candidates[n] = cluster_plans(plans, n, k, setup.n_layers, seed)
        top1 = {"candidates": np.zeros((len(prompts), len(candidates[n]))), "global": np.zeros(len(prompts)),
                "searched": np.zeros(len(prompts))}
        kl = np.zeros_like(top1["candidates"])
        budget = setup.budget(n)
        for rows, ref in references:
            conditions = {c: [setup.plan_of(candidates[n][c].tolist(), budget)] * len(rows) for c in range(len(candidates[n]))}
            conditions["global"] = glob.plans([None] * len(rows), budget)
            conditions["searched"] = [setup.plan_of(plans[j], budget) for j in rows]
            scored = score_conditions(engine, ref, conditions, "decode")
            for c in range(len(candidates[n])):
                top1["candidates"][rows, c], kl[rows, c] = scored[c]["top1"], scored[c]["kl"]
            top1["global"][rows], top1["searched"][rows] = scored["global"]["top1"], scored["searched"]["top1"]
        labels[n] = np.array([min(range(len(candidates[n])), key=lambda c: (-top1["candidates"][j, c], kl[j, c], c))
                              for j in range(len(prompts))], dtype=np.int64)
        own = top1["candidates"][np.arange(len(prompts)), labels[n]]
        report[str(n)] = {
            "candidates": [list(map(int, row)) for row in candidates[n]],
            "sizes": np.bincount(labels[n], minlength=len(candidates[n])).tolist(),
            "own_candidate_top1": rounded(mean_interval(own.tolist(), seed).as_dict("top1")),
            "global_top1": round(float(top1["global"].mean()), 4),
            "searched_top1": round(float(top1["searched"].mean()), 4),
            "own_minus_global": rounded(paired_difference(own.tolist(), top1["global"].tolist(), seed).as_dict("top1")),
            "searched_minus_own": rounded(paired_difference(top1["searched"].tolist(), own.tolist(), seed).as_dict("top1")),
            "category_purity": _purity(labels[n], categories),
        }
    plan_map = CandidatePlans(np.asarray(entries), embeddings, labels, candidates, setup.topo.identity)
    summary = {"entries": len(prompts), "k": k, "budgets": sorted(budgets), "n_continuation": n_continuation,
               "by_budget": report}
    return plan_map, summary


def _positions(categories: list[str]) -> list[tuple[str, int]]:
    """(category, index within it) of each prompt, in input order (how frontier_chunks names them)."""
    seen: dict[str, int] = {}
    out = []
    for c in categories:
        out.append((c, seen.get(c, 0)))
        seen[c] = seen.get(c, 0) + 1
    return out


def _purity(labels: np.ndarray, categories: list[str]) -> float:
    """Share of entries whose candidate is the most common one in their task category: 1.0 when the
    plan-defined categories follow the task labels, about 1/K when they ignore them."""
    hits = 0
    for category in set(categories):
        members = labels[[c == category for c in categories]]
        hits += int(np.bincount(members).max())
    return round(hits / len(labels), 4)
