"""Stage `plan_search`: the per-prompt oracle's greedy search on chosen map prompts, to the plan map's
largest budget -> data/plan_search.json (each entry's removal order), its cost in
reports/plan_search.json. Kept apart from `plan_map` so that a sweep of K reuses it."""
from pathlib import Path

from ais.api import load
from ais.evaluation.plan_search import search_plans
from ais.files import write_json
from ais.params import get
from ais.routing.budget import n_layers_to_skip
from ais.routing.corpus import read_corpus, sample_per_category

if __name__ == "__main__":
    system = load()
    params, decoder = system.params, system.decoder
    decoder.setup.seed = get(params, "plan_map.seed")
    rows = read_corpus(Path("data/corpus.jsonl"), "map")
    entries = sample_per_category([r["category"] for r in rows], get(params, "plan_map.n_per_category"),
                                  get(params, "plan_map.seed"))
    budget = max(n_layers_to_skip(f, decoder.engine.n_layers) for f in get(params, "plan_map.fractions"))
    orders, seconds = search_plans(decoder, system.tokenizer, [rows[i]["prompt"] for i in entries],
                                   [rows[i]["category"] for i in entries], budget,
                                   get(params, "validate.n_continuation"))
    write_json("data/plan_search.json", {"entries": [int(i) for i in entries], "budget": budget, "orders": orders})
    write_json("reports/plan_search.json", {"entries": len(entries), "budget": budget, "seconds": round(seconds, 1),
                                            "seconds_per_prompt": round(seconds / max(1, len(entries)), 2)})
    print(f"plan search: {len(entries)} map prompts to {budget} layers, {seconds / max(1, len(entries)):.1f} s each")
