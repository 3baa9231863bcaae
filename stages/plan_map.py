"""Stage `plan_map`: the plan-defined map. The per-prompt oracle's searched plans of map prompts
(stage `plan_search`) clustered into `plan_map.k` candidate plans per budget, each searched entry labelled with the
candidate that keeps its top-1 agreement best -> data/plan_map (what `skip.plan: plan_map` and
`plan_map_learned` look up), with the search's cost and the clustering's quality in
reports/plan_map.json."""
import json
from pathlib import Path

from ais.api import load
from ais.evaluation.plan_search import build_plan_map
from ais.files import write_json
from ais.methods.plan_map import FILE
from ais.params import get
from ais.routing.budget import n_layers_to_skip
from ais.routing.corpus import read_corpus
from ais.routing.topomap import MapError

if __name__ == "__main__":
    system = load()
    params, decoder = system.params, system.decoder
    topo = system.topo
    rows = read_corpus(Path("data/corpus.jsonl"), "map")
    if len(rows) != len(topo):
        raise MapError(f"the map has {len(topo)} entries but the corpus's map split {len(rows)}; rerun `dvc repro map`")
    seed = get(params, "plan_map.seed")
    decoder.setup.seed = seed
    search = json.loads(Path("data/plan_search.json").read_text())
    entries = search["entries"]
    budgets = sorted({n_layers_to_skip(f, decoder.engine.n_layers) for f in get(params, "plan_map.fractions")} - {0})
    if max(budgets) > search["budget"] or max(entries, default=-1) >= len(rows):
        raise MapError("data/plan_search.json does not match this map or these budgets; rerun `dvc repro plan_search`")
    plan_map, summary = build_plan_map(decoder, system.tokenizer, [rows[i]["prompt"] for i in entries],
                                       [rows[i]["category"] for i in entries], entries, topo.embeddings[entries],
                                       search["orders"], budgets, get(params, "plan_map.k"),
                                       get(params, "validate.n_continuation"), seed)
    plan_map.save(FILE)
    write_json("reports/plan_map.json", summary)
    for n, r in summary["by_budget"].items():
        print(f"plan map, {n} layers: {len(r['candidates'])} candidates (sizes {r['sizes']}); top-1 on their own members "
              f"{r['own_candidate_top1']['top1']:.3f} vs global {r['global_top1']:.3f} (own search "
              f"{r['searched_top1']:.3f}); category purity {r['category_purity']}")
