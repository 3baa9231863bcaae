"""Stage `depth`: how many layers each generated token needs (saturation layer, layers it can skip
alone), per held-out category and for FlexiDepth's six operations, beside FlexiDepth's numbers."""
from pathlib import Path

from tqdm import tqdm

from ais.evaluation.depth import (FLEXIDEPTH, FLEXIDEPTH_LAYERS, first_sentences, greedy_continuations,
                                  operation_prompts, orderings, summarise_depths, token_depths)
from ais.files import write_csv, write_json
from ais.model.engine import Engine
from ais.model.loading import load_model
from ais.params import get, load_params
from ais.report.plots import plot_depth
from ais.routing.corpus import fetch_bigbench, prompts_by_category, read_corpus, read_tasks

if __name__ == "__main__":
    params = load_params()
    model, tokenizer = load_model("data/model", get(params, "model.dtype"), get(params, "model.device"))
    engine = Engine(model)
    n_layers, n_new, seed = model.config.num_hidden_layers, get(params, "depth.max_new_tokens"), get(params, "depth.seed")
    archive = get(params, "corpus.archive")
    task = get(params, "depth.paragraphs")
    examples = read_tasks(fetch_bigbench() if archive == "auto" else Path(archive), {task})[task]
    paragraphs = [first_sentences(e["input"], get(params, "corpus.max_chars")) for e in examples]
    groups = {"operation": operation_prompts(paragraphs, get(params, "depth.n_per_operation"), seed),
              "category": prompts_by_category(read_corpus(Path("data/corpus.jsonl")), "heldout",
                                              get(params, "depth.n_per_category"))}
    items = [(kind, group, i, prompt) for kind, by_group in groups.items() for group, prompts in by_group.items()
             for i, prompt in enumerate(prompts)]
    print(f"depth: {len(items)} greedy continuations of {n_new} tokens", flush=True)
    continuations = greedy_continuations(engine, tokenizer, [p for *_, p in items], n_new)
    per_item = {kind: {} for kind in groups}
    rows = []
    for (kind, group, i, _), (ids, continuation) in tqdm(list(zip(items, continuations)), desc="depth", unit="prompt"):
        depths = token_depths(engine, ids, continuation)
        per_item[kind].setdefault(group, []).append(depths)
        rows += [{"kind": kind, "group": group, "item": i, "token": t, "text": tokenizer.decode([token]),
                  **{k: int(v[t]) for k, v in depths.items()}} for t, token in enumerate(continuation)]
    summaries = {kind: summarise_depths(items, n_layers, seed) for kind, items in per_item.items()}
    write_csv("reports/depth_tokens.csv", rows)
    write_json("reports/depth.json", {
        "n_layers": n_layers, "max_new_tokens": n_new, "operations": summaries["operation"],
        "categories": summaries["category"],
        "orderings": {m: orderings(summaries["operation"], m) for m in ("needed", "saturation")},
        "flexidepth": {"model": "Llama-3-8B-Instruct", "n_layers": FLEXIDEPTH_LAYERS, "layers_per_token": FLEXIDEPTH},
        "definitions": {"needed": "L - layers the token alone can skip keeping its top-1 (least block influence "
                                  "first, bisection; skipped layers still write keys and values)",
                        "saturation": "first layer after which the logit lens always gives the final top-1"}})
    plot_depth({op: items[0] for op, items in per_item["operation"].items()}, n_layers,
               {op: v / FLEXIDEPTH_LAYERS for op, v in FLEXIDEPTH.items()}, "reports/depth.png",
               f"layers each generated token needs (first prompt of each operation, {n_layers}-layer model)")
    for op, s in summaries["operation"].items():
        print(f"depth {op}: needed {s['needed']:.1f} [{s['needed_ci_low']:.1f}, {s['needed_ci_high']:.1f}] of {n_layers} "
              f"({s['needed_fraction']:.2f}; FlexiDepth {s.get('flexidepth_fraction')}), saturation {s['saturation']:.1f}")
