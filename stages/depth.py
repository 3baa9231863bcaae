"""Stage `depth`: how many layers each generated token needs (saturation layer, layers it can skip
alone), per held-out category and for FlexiDepth's six operations, beside FlexiDepth's numbers."""
from tqdm import tqdm

from ais.evaluation.depth import FLEXIDEPTH, FLEXIDEPTH_LAYERS, orderings, summarise_depths, token_depths
from ais.evaluation.references import FILE as REFERENCE, References
from ais.files import write_csv, write_json
from ais.model.engine import Engine
from ais.model.loading import load_model
from ais.params import get, load_params
from ais.report.plots import plot_depth

if __name__ == "__main__":
    params = load_params()
    model, tokenizer = load_model("data/model", get(params, "model.dtype"), get(params, "model.device"))
    engine = Engine(model)
    n_layers, n_new, seed = model.config.num_hidden_layers, get(params, "depth.max_new_tokens"), get(params, "depth.seed")
    items = References(REFERENCE, engine).continuations()  # the full model's greedy continuations (stage reference)
    per_item = {kind: {} for kind in dict.fromkeys(item["kind"] for item in items)}
    rows = []
    for item in tqdm(items, desc="depth", unit="prompt"):
        kind, group, i, continuation = item["kind"], item["group"], item["item"], item["continuation"]
        depths = token_depths(engine, item["prompt_ids"], continuation)
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
