"""Stage `reference`: the full model's greedy continuations and its last-layer states at the scored
positions, once, for every prompt the scoring stages compare plans on (validation, the frontier, the
calibration prompts of importance and of the methods that calibrate, the depth prompts) ->
data/reference/, with their count, size and cost in reports/reference.json."""
import time
from pathlib import Path

from ais.evaluation.depth import depth_items, greedy_continuations
from ais.evaluation.references import FILE, build, frontier_chunks, importance_chunks, save
from ais.files import write_json
from ais.model.engine import Engine
from ais.model.loading import load_model
from ais.params import get, load_params
from ais.routing.corpus import prompts_by_category, read_corpus

SPLITS = ("heldout", "heldout_task")

if __name__ == "__main__":
    params = load_params()
    model, tokenizer = load_model("data/model", get(params, "model.dtype"), get(params, "model.device"))
    engine = Engine(model)
    corpus = read_corpus(Path("data/corpus.jsonl"))
    n_continuation = get(params, "validate.n_continuation")
    groups = {}
    for split in SPLITS:
        for category, prompts in prompts_by_category(corpus, split, get(params, "validate.n_per_category")).items():
            groups[f"validate/{split}/{category}"] = (prompts, n_continuation, ("forced",))
        chunks = frontier_chunks(prompts_by_category(corpus, split, get(params, "frontier.n_per_category")))
        for k, chunk in enumerate(chunks):
            groups[f"frontier/{split}/{k}"] = ([p for *_, p in chunk], n_continuation, ("decode",))
    for category, prompts in prompts_by_category(corpus, "importance").items():
        for k, chunk in enumerate(importance_chunks(prompts)):
            groups[f"importance/{category}/{k}"] = (chunk, get(params, "importance.n_continuation"), ("forced", "decode"))
    started = time.perf_counter()
    built = build(engine, tokenizer, groups)
    items = depth_items(params, corpus)
    depth = greedy_continuations(engine, tokenizer, [p for *_, p in items], get(params, "depth.max_new_tokens"))
    continuations = [{"kind": kind, "group": group, "item": i, "prompt_ids": ids, "continuation": cont}
                     for (kind, group, i, _), (ids, cont) in zip(items, depth)]
    seconds = time.perf_counter() - started
    save(FILE, built, groups, continuations, engine)
    size = sum(p.stat().st_size for p in Path(FILE).iterdir())
    summary = {"groups": len(groups), "prompts": sum(len(g[0]) for g in groups.values()), "depth_prompts": len(items),
               "bytes": size, "seconds": round(seconds, 1),
               "by_kind": {kind: sum(1 for g in groups if g.startswith(kind + "/")) for kind in ("validate", "frontier",
                                                                                             "importance")}}
    write_json("reports/reference.json", summary)
    print(f"reference: {summary['prompts']} prompts in {summary['groups']} groups and {len(items)} depth continuations, "
          f"{size / 1e6:.1f} MB, {seconds:.0f} s")
