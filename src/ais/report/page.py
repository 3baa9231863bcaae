"""reports/README.md: one readable page of the headline tables, generated from the metrics files,
so a reviewer of an experiment sees everything in one diff. Every number comes from a stage."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from ais.params import get


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


SPLIT_NAMES = {"heldout": "held-out prompts of seen tasks", "heldout_task": "prompts of tasks the map never saw"}
COMPARISONS = {"routed_minus_global": "routed − global (the central question)",
               "routed_minus_oracle": "routed − oracle (cost of routing mistakes)",
               "routed_minus_random": "routed − random", "hard_minus_soft": "hard − soft (same routed layers)",
               "global_any_layer_minus_global": "global allowed below the pivot − global (cost of the pivot rule)"}


def _interval(m: dict, key: str) -> str:
    return f"{m[key]:+.4f} [{m[key + '_ci_low']:+.4f}, {m[key + '_ci_high']:+.4f}]"


def _excludes_zero(m: dict, key: str) -> bool:
    return m[key + "_ci_low"] > 0 or m[key + "_ci_high"] < 0


def _bold_if_excludes_zero(m: dict, key: str) -> str:
    if key not in m:
        return ""
    return f"**{_interval(m, key)}**" if _excludes_zero(m, key) else _interval(m, key)


def _within(m: dict, key: str, value: float) -> str:
    return "within" if m[key + "_ci_low"] <= value <= m[key + "_ci_high"] else "**outside**"


def _routed_vs_global_words(benchmarks: dict) -> str:
    key = "routed_minus_global_acc_norm"
    parts = [b for b in benchmarks if b != "arc_average" and key + "_ci_low" in benchmarks[b]]
    better = [b for b in parts if benchmarks[b][key + "_ci_low"] > 0]
    worse = [b for b in parts if benchmarks[b][key + "_ci_high"] < 0]
    same = [b for b in parts if b not in better + worse]
    words = [f"Routed against global plans: measurably better on {', '.join(better) or 'no benchmark'}, "
             f"measurably worse on {', '.join(worse) or 'no benchmark'}, no measurable difference on "
             f"{', '.join(same) or 'no benchmark'}."]
    if len(better) + len(worse) > 0 and parts:
        words.append(f"With {len(parts)} benchmarks at 95% each, about {0.05 * len(parts):.2f} would exclude 0 by "
                     "chance alone; one such benchmark is weak evidence.")
    return " ".join(words)


def multiple_choice_section(mc: dict) -> list[str]:
    """The harness's accuracies: the full model beside the model card, then each plan's paired
    difference from the full model and routed − global."""
    mode = mc["mode"]
    benchmarks = dict(sorted((k, v) for k, v in mc.items() if isinstance(v, dict)))
    card, skips = [], []
    for name, m in benchmarks.items():
        published = m.get("published_acc_norm")
        full = f"{m['full_acc_norm']:.3f} [{m['full_acc_norm_ci_low']:.3f}, {m['full_acc_norm_ci_high']:.3f}]"
        verdict = _within(m, "full_acc_norm", published) if published is not None else ""
        card.append([name, m.get("split", ""), m["n"], m.get("chance", ""), f"{m['full_acc']:.3f}", full,
                     published if published is not None else "", verdict])
        if "routed_minus_full_acc_norm_ci_low" in m:
            skips.append([name, m["n"], *(_bold_if_excludes_zero(m, f"{c}_minus_full_acc_norm")
                                          for c in ("routed", "global", "random")),
                          _bold_if_excludes_zero(m, "routed_minus_global_acc_norm")])
    out = ["## Multiple choice (stage `multiple_choice`, lm-evaluation-harness)", "",
           "The harness's own task definitions, zero-shot, scored offline on questions sampled with a seed "
           "(`data/benchmarks/manifest.json`). The full model's `acc_norm` (length-normalised log-likelihood, the "
           "model card's metric) with a 95% bootstrap interval over questions, beside SmolLM2-135M-Instruct's "
           "model card (lighteval, the original bfloat16 weights; ours are its Q4_1 GGUF). ARC is scored on its "
           "validation split (the only one shipped offline), the card's on the test split.", "",
           _table(["benchmark", "split", "n", "chance", "full acc", "full acc_norm [95%]", "model card acc_norm",
                   "card in our interval"],
                  card), ""]
    if skips:
        out += [f"Paired differences in `acc_norm` from the full model, question by question, all plans in `skip.mode` "
                f"({mode}) with the same number of layers. **Bold**: the interval excludes 0.", "",
                _table(["benchmark", "n", "routed − full", "global − full", "random − full", "routed − global"], skips),
                "", _routed_vs_global_words(benchmarks), "", "Per-question results: `multiple_choice_questions.csv`; `acc` columns in `multiple_choice.csv`.", ""]
    return out


def central_answer(validate: dict) -> list[str]:
    """The answer to the project's question, in numbers with intervals and in words."""
    out = ["## Does a per-category plan beat one global plan?", "",
           f"Paired differences over prompts (per prompt: the same prompt under both plans), mean and 95% bootstrap "
           f"interval, all plans in `skip.mode` ({validate['mode']}) with the same number of layers; top-1 agreement "
           "with the full model (higher is better) and KL (lower is better), teacher-forced on the full model's own "
           "greedy continuation up to its end-of-sequence token. **Bold**: the interval excludes 0.", ""]
    rows = []
    for split, name in SPLIT_NAMES.items():
        m = validate.get(split)
        if not m:
            continue
        for key, label in COMPARISONS.items():
            if f"{key}_top1" not in m:
                continue
            cells = []
            for metric in ("top1", "kl"):
                text = _interval(m, f"{key}_{metric}")
                cells.append(f"**{text}**" if _excludes_zero(m, f"{key}_{metric}") else text)
            rows.append([name, f"{m['n_prompts']}", f"{m['routing_accuracy']:.3f}", label, *cells])
    out += [_table(["prompts", "n", "routing accuracy", "difference", "top-1 agreement", "KL"], rows), ""]
    words = []
    for split, name in SPLIT_NAMES.items():
        m = validate.get(split)
        if not m:
            continue
        key = "routed_minus_global_top1"
        if not _excludes_zero(m, key):
            words.append(f"On {name} (n={m['n_prompts']}), the data show no measurable difference between routed and "
                         f"global plans in top-1 agreement ({_interval(m, key)}); they do not support a claim that "
                         "per-category routing helps, nor that it hurts, by more than the interval's ends.")
        else:
            better = "better" if m[key] > 0 else "worse"
            words.append(f"On {name} (n={m['n_prompts']}), routed plans are measurably {better} than the global plan "
                         f"in top-1 agreement ({_interval(m, key)}).")
        oracle = "routed_minus_oracle_top1"
        if _excludes_zero(m, oracle):
            words.append(f"Routing mistakes cost agreement there ({_interval(m, oracle)} against the true category's plan).")
        else:
            words.append(f"The true category's plan does no measurably better than the routed one ({_interval(m, oracle)}).")
        pivot = "global_any_layer_minus_global_top1"
        if pivot in m:
            words.append(f"Letting the global plan skip the router's layers too changes top-1 agreement by "
                         f"{_interval(m, pivot)}" + (" (measurable)." if _excludes_zero(m, pivot) else
                                                     " (no measurable difference)."))
    return out + [" ".join(words), ""]


def build_report(reports: Path, params: dict, others: list[dict] | None = None) -> str:
    """The Markdown page, from whatever metrics exist under `reports` (and, from `others`, the other
    models' summaries for the comparison across model size)."""
    model = _json(reports / "model.json") or {}
    out = ["# Results", "",
           "Generated by the `report` stage from the metrics files in this folder; do not edit by hand.", "",
           f"Model: `{get(params, 'model.source')}`, dtype `{get(params, 'model.dtype')}` "
           f"(here: {model.get('dtype', '?')}), device `{get(params, 'model.device')}`. "
           f"Skip: mode `{get(params, 'skip.mode')}`, fraction {get(params, 'skip.fraction')}. "
           f"Plan: `{get(params, 'skip.plan')}`. Router: `{get(params, 'router.kind')}`, k={get(params, 'router.k')}. "
           f"Importance: `{get(params, 'importance.method')}`.", ""]
    validate = _json(reports / "validate.json")
    if validate:
        out += central_answer(validate)
    frontier = _csv(reports / "frontier.csv")
    if frontier:
        out += frontier_section(frontier, _csv(reports / "ladder.csv"),
                                (_json(reports / "frontier.json") or {}).get("dynamic_overheads"))
    depth = _json(reports / "depth.json")
    if depth:
        out += depth_section(depth)
    if validate:
        other = "soft" if validate["mode"] == "hard" else "hard"
        for split, name in SPLIT_NAMES.items():
            m = validate.get(split)
            if not m:
                continue
            rows = [[f"{plan} ({validate['mode'] if plan != f'routed_{other}' else other})", m[f"{plan}_top1"],
                     m[f"{plan}_top5"], m[f"{plan}_kl"], m[f"{plan}_categories_passing"]]
                    for plan in ("routed", "oracle", "global", "random", f"routed_{other}")]
            out += [f"## Routed skipping on {name} (stage `validate`)", "",
                    f"{m['n_prompts']} prompts; routing accuracy {_interval(m, 'routing_accuracy').lstrip('+')}; "
                    f"{m['skipped_fraction']:.0%} of layers skipped per prompt; {m['mean_scored_positions']} positions "
                    f"scored per prompt on average; a category passes at {validate['pass_criterion']}.", "",
                    _table(["plan", "top-1", "top-5 overlap", "KL", "categories passing"], rows), ""]
        out += ["Per category: `validate_per_category.csv`; per prompt: `validate_prompts.csv`.", ""]
    throughput = _json(reports / "throughput.json")
    if throughput and "mixed_batch_exactness" in throughput:
        out += throughput_section(throughput)
    lossless = _json(reports / "lossless.json")
    if lossless and "exactness" in lossless:
        out += lossless_section(lossless)
    mc = _json(reports / "multiple_choice.json")
    if mc:
        out += multiple_choice_section(mc)
    routing = _json(reports / "map.json")
    if routing:
        out += ["## Routing (stage `map`)", "",
                _table(["measure", "value"], [
                    [f"k-NN homogeneity (k={routing['homogeneity_k']})", routing["knn_homogeneity"]],
                    ["silhouette (cosine)", routing["silhouette_cosine"]],
                    ["categories with centroid recall >= 0.7", f"{routing['categories_with_centroid_recall_ge_0.7']} / {routing['n_categories']}"],
                    ["k-NN accuracy, held-out prompts", routing.get("knn_accuracy_heldout")],
                    ["learned accuracy, held-out prompts", routing.get("learned_accuracy_heldout")],
                    ["k-NN accuracy, held-out tasks", routing.get("knn_accuracy_heldout_task")],
                    ["learned accuracy, held-out tasks", routing.get("learned_accuracy_heldout_task")],
                    ["chance", routing["chance"]]]), "",
                *([f"How well the block influence the neighbours and prompt plans rank layers by tracks the single-layer "
                   f"KL the category plans use: Spearman {routing['block_influence_vs_single_kl_spearman']['mean']} "
                   f"on average over categories (layers {routing['block_influence_vs_single_kl_spearman']['layers']}; "
                   "per category, the mean over its map entries against its KL; per category in `map.json`).", ""]
                  if "block_influence_vs_single_kl_spearman" in routing else []),
                "![UMAP](umap.png)", "", "![pivot sweep](pivot_sweep.png)", ""]
    if others:
        out += models_section([model_summary(reports, params), *others])
    importance = _json(reports / "importance.json")
    if importance:
        out += ["## Layer importance (stage `importance`)", "",
                f"Method `{importance['method']}`, {min(importance['n_prompts_per_category'].values())} calibration "
                "prompts per category. Stability: Spearman rank correlation between the importance measured on even- "
                "and odd-numbered prompts, per category (1 = the same layer ranking from either half), over the layers "
                "past the router's pivot, the ones a plan may skip"
                + (f" (over all measured layers: {importance['split_half_spearman_all_layers_mean']} on average)"
                   if "split_half_spearman_all_layers_mean" in importance else "") + ".", "",
                _table(["category", "split-half Spearman"], [[c, v] for c, v in importance["split_half_spearman"].items()]),
                "", "Mean per method: " + ", ".join(f"{m} {v}" for m, v in importance["split_half_spearman_by_method"].items())
                + ".", "", "![importance](importance.png)", ""]
    return "\n".join(out)


def _iqr(v: dict | None) -> str:
    return f"{v['median']} [{v['q1']}, {v['q3']}]" if v else ""


def _repeats(throughput: dict, part: str, key: str) -> str:
    """How many repeats a part of the throughput stage took per batch size, and its most."""
    taken = [v["repeats"] for v in throughput[part].values() if "repeats" in v]
    if not taken:
        return str(throughput[key])
    return "–".join(str(n) for n in sorted({min(taken), max(taken)})) + f" of at most {throughput[key]}"


def throughput_section(throughput: dict) -> list[str]:
    """Mixed traffic: prefill requests/s and generation tokens/s of the full model, the routed plan, the
    global plan at the same layer count and the prompt's plan; whether a row of a mixed batch decodes
    as it does alone."""
    pre = [[k, v["full_req_per_s"], v["routed_req_per_s"], v["global_req_per_s"], v["speedup_routed"],
            v["speedup_global"], _iqr(v["routed_over_global"]), v["ideal_speedup"], v["router_fraction_of_full"],
            v["padding_share"]] for k, v in throughput["prefill"].items()]
    gen = [[k, v["categories_in_batch"], v["full_tok_per_s"], v["routed_tok_per_s"], v["global_tok_per_s"],
            v["prompt_tok_per_s"], _iqr(v["routed_over_global"]), _iqr(v["prompt_over_global"]), v["ideal_speedup"]]
           for k, v in throughput["generate"].items()]
    exact = throughput["mixed_batch_exactness"]
    return ["## Throughput of mixed traffic (stage `throughput`)", "",
            f"{throughput['device']}, {throughput['dtype']}, {throughput['threads']} threads; medians of interleaved "
            f"repeats after {throughput['warmup']} warm-up{'s' if throughput['warmup'] != 1 else ''}, device "
            f"synchronised: {_repeats(throughput, 'prefill', 'repeats')} for the prefill, "
            f"{_repeats(throughput, 'generate', 'generate_repeats')} for generation (a batch size stops once every "
            f"speedup's interquartile range is at most {throughput.get('target_iqr')}). Each batch mixes categories (rows up to 9 "
            "come from 9 categories), so every row has its own plan; the engine runs each layer once for the rows "
            "that run it. Routed: `skip.plan`'s plans in `skip.mode`, the router inside the clock; global: one plan "
            "with as many layers for the whole batch; prompt: each row's own layer scores (its prefill runs every "
            "layer). Routed / global: the per-repeat ratio of the two speeds, median [interquartile range].", "",
            _table(["prefill", "full req/s", "routed req/s", "global req/s", "routed speedup", "global speedup",
                    "routed / global", "ideal", "router / full", "padding"], pre), "",
            _table(["generation", "categories", "full tok/s", "routed tok/s", "global tok/s", "prompt tok/s",
                    "routed / global", "prompt / global", "ideal"], gen), "",
            "A row of a mixed batch against the same request alone (greedy tokens, batch of "
            f"{next(iter(next(iter(exact.values())).values()))['rows']}): "
            + "; ".join(f"{dtype}: " + ", ".join(f"{k} {v['identical_share']:.0%}" for k, v in e.items())
                        for dtype, e in exact.items())
            + ". `generate` is transformers' own, full model: what batching alone does to the rows in that dtype "
            "(bfloat16 rounds differently at another row count or padding; float32 is where identity is claimed).", ""]


def _speedup_words(v: dict, against: str) -> str:
    """'x1.21 [1.10, 1.33]' and what the interval supports, for one speedup dict."""
    low, high = v.get("speedup_ci_low", v["per_prompt_speedup_ci_low"]), v.get("speedup_ci_high", v["per_prompt_speedup_ci_high"])
    verdict = ("faster than" if low > 1 else "slower than" if high < 1 else "no measurable difference from")
    return (f"x{v['speedup']} [{low}, {high}] pooled over {v.get('n_prompts', v.get('per_prompt_speedup_n'))} prompts: "
            f"{verdict} {against} (mean per-prompt ratio {v['per_prompt_speedup']} "
            f"[{v['per_prompt_speedup_ci_low']}, {v['per_prompt_speedup_ci_high']}])")


def lossless_section(lossless: dict) -> list[str]:
    """The lossless stage: the user's baselines and every measured drafter in each measured dtype, the chosen system,
    exactness with the bfloat16 rounding bound, and the cost model that says why a drafter pays."""
    sys_dtype, system = lossless["system_dtype"], lossless["system"]
    decoders = lossless["decoders"]
    out = ["## Lossless decoding (stage `lossless`)", "",
           f"Greedy generation of {lossless['max_new_tokens']} tokens at batch 1, gamma {lossless['gamma']}, against "
           "transformers `generate` (greedy, and with `prompt_lookup_num_tokens`) in " + " and ".join(decoders)
           + " (`lossless.strict` adds float32 where the system runs in bfloat16), on the same "
           "prompts in one run, in a fresh random order per prompt. Each category's drafter was chosen on "
           f"{lossless['n_calibration_prompts']} calibration prompts; every number below is measured on "
           f"{lossless['n_test_prompts']} other (test) prompts, with the routing a drafter needs inside its clock. "
           f"The system runs in {sys_dtype} (`lossless.dtype`).", "",
           f"**The chosen-drafter system: {_speedup_words(system['vs_generate_bf16'], 'bfloat16 `generate`')}"
           + ("" if sys_dtype == "bfloat16" else
              f"; {_speedup_words(system['vs_generate_same_dtype'], f'{sys_dtype} `generate`')}")
           + (f"; {_speedup_words(system['vs_prompt_lookup'], 'transformers prompt lookup')}"
              if "vs_prompt_lookup" in system else "") + ".**", ""]
    suffix = decoders.get(sys_dtype, {}).get("suffix")
    if suffix and "vs_prompt_lookup" in suffix:
        out += [f"The suffix drafter (the longest suffix of the context found in the context or in the full model's "
                f"replies to similar map prompts, their nearest first): "
                f"{_speedup_words(suffix['vs_prompt_lookup'], 'transformers prompt lookup')}, "
                f"{_speedup_words(suffix['vs_generate_bf16'], 'bfloat16 `generate`')}; {suffix['mean_accepted']} tokens "
                f"accepted of {suffix['drafted_per_step']} drafted per step. Prompt lookup runs at its fastest "
                f"`prompt_lookup_num_tokens` on the calibration prompts, {lossless.get('lookup')} (tokens/s per "
                f"setting: {lossless.get('lookup_sweep_tok_per_s')}).", ""]
    for split, named in (lossless.get("by_split") or {}).items():
        cells = [f"{name} x{v['vs_generate_bf16']['speedup']} [{v['vs_generate_bf16']['speedup_ci_low']}, "
                 f"{v['vs_generate_bf16']['speedup_ci_high']}]" for name, v in named.items()
                 if "vs_generate_bf16" in v and name in ("generate_prompt_lookup", "prompt_lookup", "suffix", "system")]
        out += [f"- {SPLIT_NAMES.get(split, split)} ({lossless['test_splits'][split]} prompts), against bfloat16 "
                f"`generate`: " + ", ".join(cells) + "."]
    out += [""]
    rows = []
    for dtype, named in decoders.items():
        for name, v in named.items():
            b, same, pl = v.get("vs_generate_bf16", {}), v["vs_generate_same_dtype"], v.get("vs_prompt_lookup")
            rows.append([dtype, name, v["tok_per_s"], b.get("speedup"),
                         f"[{b.get('speedup_ci_low', b.get('per_prompt_speedup_ci_low'))}, "
                         f"{b.get('speedup_ci_high', b.get('per_prompt_speedup_ci_high'))}]",
                         f"{pl['speedup']} [{pl['speedup_ci_low']}, {pl['speedup_ci_high']}]" if pl else "",
                         same["speedup"], v["identical_to_generate"], v.get("mean_accepted", ""),
                         v.get("draft_ms_per_token", ""), v.get("verify_ms_per_step", "")])
    out += ["Every decoder, all test prompts pooled (speedups: pooled tokens/s ratio, 95% paired bootstrap interval "
            "over prompts). `none` is the project's loop with no draft; `routed_skip_*` are the routed drafter without "
            "its adaptive threshold or without reusing the layers below the lowest skipped one; `system` decodes each "
            "prompt with its routed category's drafter, the routing taken from the prefill's first layers (they are "
            "the router's layers), so it costs only the map lookup.", "",
            _table(["dtype", "decoder", "tok/s", "vs bf16 generate", "95% interval", "vs prompt lookup [95%]",
                    "vs same-dtype generate",
                    "identical to generate", "accepted/step", "draft ms/token", "verify ms/step"], rows), ""]
    cost = [[dtype, name, c["c"], c["alpha"], c["drafted_per_step"], c.get("verify_cost", ""), c["predicted_leviathan"],
             c["predicted_measured_cost"], v["vs_generate_same_dtype"]["speedup"], c.get("c_to_break_even", ""),
             c.get("alpha_to_break_even") or ("none suffices" if "alpha_to_break_even" in c else "")]
            for dtype, named in decoders.items() for name, v in named.items() if (c := v.get("cost_model"))]
    out += ["Cost model (Leviathan et al.): c = draft cost per token as a fraction of a plain step, alpha = acceptance "
            "rate, g = tokens drafted per step; the predicted speedup is the expected tokens per step "
            "(1 - alpha^(g+1)) / (1 - alpha) over g*c + 1, and again with the measured tokens per step and the "
            "measured cost of verifying g + 1 tokens. A drafter pays only where c is below its break-even value at "
            "its acceptance (or its acceptance above the break-even value at its c).", "",
            _table(["dtype", "drafter", "c", "alpha", "g", "verify cost (steps)", "predicted (Leviathan)",
                    "predicted (measured costs)", "measured (vs same-dtype generate)", "c to break even",
                    "alpha to break even"], cost), ""]
    exact = lossless["exactness"]
    for dtype, e in exact.items():
        out.append(f"- **{dtype}**: {e['identical_share']} of {e['n_generations']} generations identical to `generate` "
                   f"in {dtype} ({e['n_divergent']} divergent); the largest logit change between a several-token "
                   f"forward and one-token steps is {e['rounding_delta']}, so a flip is possible only where the "
                   f"reference's top-1 and top-2 logits are closer than {e['bound']}. "
                   + (f"Margins at the divergences: {e['divergent_margins']}; " if e["n_divergent"] else "")
                   + ("no divergence." if not e["n_divergent"] else
                      "every divergence lies below the bound (rounding ties)." if e["all_divergences_below_bound"]
                      else "**a divergence lies above the bound: not explained by rounding.**"))
    verify = lossless["verify_ms_by_tokens"]
    widths = sorted({n for v in verify.values() for n in v}, key=int)
    out += ["", "What one cached full-model forward costs against the tokens it scores (median ms):", "",
            _table(["dtype"] + [str(n) for n in widths], [[d] + [v.get(n) for n in widths] for d, v in verify.items()]),
            "", "Per category (tokens/s against " + next(iter(lossless["per_category"].values()))["speedup_vs"]
            + " `generate`; the chosen drafter runs in the system):", ""]
    cats = lossless["per_category"]
    keys = [k for k in next(iter(cats.values())) if "/" in k and k != "speedup_vs" and "routed_skip_" not in k]
    out += [_table(["category", "test prompts", "chosen"] + keys,
                   [[c, v["n_prompts"], v["drafter"]] + [v[k] for k in keys] for c, v in cats.items()]),
            "", "A category's ratios rest on its few test prompts, each decoded once per decoder (one prompt: no "
            "interval; the timing noise of one 32-token generation on this machine is several percent).",
            "", "![lossless](lossless.png)", ""]
    if lossless.get("example"):
        ex = lossless["example"]
        out += [f"Example ({ex['category']}): *{ex['prompt'][:160]}* → {ex['reply']!r}", ""]
    return out


def _num(row: dict, key: str) -> float | None:
    value = row.get(key, "")
    return float(value) if value not in ("", None) else None


def _diff_cell(row: dict, key: str) -> str:
    if _num(row, key) is None:
        return ""
    text = f"{_num(row, key):+.3f} [{_num(row, key + '_ci_low'):+.3f}, {_num(row, key + '_ci_high'):+.3f}]"
    return f"**{text}**" if _num(row, key + "_ci_low") > 0 or _num(row, key + "_ci_high") < 0 else text


def _speed_cell(row: dict, size: int) -> str:
    if _num(row, f"b{size}_speedup") is None:
        return ""
    return f"{row[f'b{size}_speedup']} [{row[f'b{size}_speedup_q1']}, {row[f'b{size}_speedup_q3']}]"


def _ladder_words(frontier: list[dict]) -> list[str]:
    """Per split and count: which adaptive level beats which, in words, with the intervals."""
    names = {"minus_global_top1": "the global plan", "minus_category_top1": "the routed category plan"}
    words = []
    for split, label in SPLIT_NAMES.items():
        for n in sorted({int(r["n_skipped"]) for r in frontier if r["split"] == split and int(r["n_skipped"]) > 0}):
            parts = []
            for r in (r for r in frontier if r["split"] == split and int(r["n_skipped"]) == n):
                for key, other in names.items():
                    if _num(r, key) is None or r["method"] in ("random",):
                        continue
                    low, high = _num(r, key + "_ci_low"), _num(r, key + "_ci_high")
                    verdict = "better than" if low > 0 else "worse than" if high < 0 else "no measurably different from"
                    parts.append(f"{r['method']} is {verdict} {other} ({_diff_cell(r, key).strip('*')})")
            if parts:
                words.append(f"- {label}, {n} layers: " + "; ".join(parts) + ".")
    return words


LADDER_WORDS = {("category", "global"): "category over global", ("neighbours", "category"): "neighbours over category",
                ("prompt", "neighbours"): "prompt over neighbours", ("prompt", "category"): "prompt over category",
                ("dynamic", "prompt"): "token (dynamic) over prompt",
                ("prompt_oracle", "prompt"): "ceiling: per-prompt oracle over prompt",
                ("prompt_oracle_oos", "global"): "ceiling, out of sample: the oracle searched on the early half over global",
                ("prompt_oracle", "prompt_oracle_oos"): "fitting: the in-sample oracle over the out-of-sample one",
                ("plan_map", "global"): "plan map (k-NN) over global", ("plan_map", "category"): "plan map over category",
                ("plan_map_learned", "global"): "plan map (learned router) over global",
                ("neighbours", "category_scores"): "control: neighbours over the category's mean of the same scores",
                ("category_scores", "category"): "control: the category's mean scores over its importance"}


def ladder_section(gaps: list[dict]) -> list[str]:
    """The gap between each adjacent pair of adaptivity levels, per split and budget, in numbers and words."""
    rows, words = [], []
    for g in gaps:
        pair = (g["higher"], g["lower"])
        label = LADDER_WORDS.get(pair, f"{pair[0]} over {pair[1]}")
        rows.append([SPLIT_NAMES.get(g["split"], g["split"]), g["n_skipped"], label, g["n_prompts"],
                     _diff_cell(g, "top1_difference"), _diff_cell(g, "kl_difference")])
        if g.get("positions", "all") != "all":
            label += f" ({g['positions']})"
        if not pair[0].startswith(("prompt_oracle",)) and "control" not in label:
            low, high = _num(g, "top1_difference_ci_low"), _num(g, "top1_difference_ci_high")
            verdict = ("gains" if low > 0 else "loses" if high < 0 else "shows no measurable difference:")
            words.append(f"- {SPLIT_NAMES.get(g['split'], g['split'])}, {g['n_skipped']} layers: {label} {verdict} "
                         f"{_diff_cell(g, 'top1_difference').strip('*')} top-1.")
    return ["### The adaptivity ladder: what each level adds", "",
            "Paired differences over the same prompts (top-1 agreement: higher is better; KL: lower is better), 95% "
            "bootstrap intervals, **bold** where the interval excludes 0. Levels from least to most input-dependent: "
            "one global plan, the routed category's plan, the plan of the prompt's nearest map entries' own layer "
            "scores, the prompt's own layer scores (its prefill runs every layer: no prefill saving), per-token depth. "
            "The per-prompt oracle (a greedy search on the prompt's own reference continuation, in-sample) is the "
            "ceiling of any input-dependent plan.", "",
            _table(["prompts", "layers", "gap", "n", "top-1", "KL"], rows), "", *words, ""]


INPUT_DEPENDENT = ("category", "neighbours", "category_scores", "prompt", "plan_map", "plan_map_learned", "dynamic",
                   "dynamic_calm")  # deployable levels whose plan depends on the request


def out_of_sample_answer(frontier: list[dict], gaps: list[dict]) -> list[str]:
    """The adaptivity question in words: does any deployable input-dependent plan beat the global
    plan on prompts it never saw (per split: which, by how much; where none does, the largest upper end
    of the intervals bounds the gain), and how far the out-of-sample per-prompt ceiling sits above it."""
    words = ["**Does an input-dependent plan beat one global plan out of sample?** (top-1 agreement, paired "
             "over the frontier's prompts, 95% intervals)", ""]
    for split, label in SPLIT_NAMES.items():
        rows = [r for r in frontier if r["split"] == split and r["method"] in INPUT_DEPENDENT
                and _num(r, "minus_global_top1") is not None]
        if not rows:
            continue
        wins = [r for r in rows if _num(r, "minus_global_top1_ci_low") > 0]
        bound = max(rows, key=lambda r: _num(r, "minus_global_top1_ci_high"))
        widths = [_num(r, "minus_global_top1_ci_high") - _num(r, "minus_global_top1_ci_low") for r in rows]
        counts = sorted({int(r["n_skipped"]) for r in rows})
        if wins:
            text = "yes: " + "; ".join(f"{r['method']} at {r['n_skipped']} layers "
                                        f"{_diff_cell(r, 'minus_global_top1').strip('*')}" for r in wins)
        else:
            text = (f"no: none of {len({r['method'] for r in rows})} levels is measurably better at "
                    f"{', '.join(map(str, counts))} layers; the gain is at most "
                    f"{_num(bound, 'minus_global_top1_ci_high'):+.3f} (the highest upper end: {bound['method']} at "
                    f"{bound['n_skipped']} layers)")
        text += f"; intervals {min(widths) / 2:.3f}–{max(widths) / 2:.3f} wide either side"
        ceiling = [g for g in gaps if g["split"] == split and (g["higher"], g["lower"]) == ("prompt_oracle_oos", "global")]
        fitting = [g for g in gaps if g["split"] == split and (g["higher"], g["lower"]) == ("prompt_oracle", "prompt_oracle_oos")]
        if ceiling:
            text += (". The out-of-sample per-prompt ceiling (searched on the first half of each continuation, scored "
                     "on the second) over global: " + ", ".join(f"{g['n_skipped']} layers "
                                                                f"{_diff_cell(g, 'top1_difference').strip('*')}"
                                                                for g in ceiling))
        if fitting:
            text += ("; the in-sample oracle over it on the same positions (what the in-sample ceiling owes to "
                     "fitting): " + ", ".join(f"{g['n_skipped']} layers {_diff_cell(g, 'top1_difference').strip('*')}"
                                             for g in fitting))
        words.append(f"- {label.capitalize()}: {text}.")
    return words + [""] if len(words) > 2 else []


def frontier_section(frontier: list[dict], gaps: list[dict] | None = None, overheads: dict | None = None) -> list[str]:
    """The adaptivity frontier: every level under one protocol, led by the ladder's gaps, quality with
    paired intervals against the global and category plans at the same count, and the measured speed."""
    sizes = sorted({int(k[1:].split("_")[0]) for k in frontier[0] if k.startswith("b") and k.endswith("_speedup")})
    out = ["## Adaptivity: every level on one frontier (stage `frontier`)", "",
           "One protocol for every level: the prompt's prefill runs every layer (the router's layers are its first "
           "layers, so routing costs only the map lookup), then each generated token skips the layers its level "
           "chooses: one `global` plan; the routed `category`'s plan (`oracle`: the true category's); `neighbours`, "
           "the plan of the mean layer scores (block influence) of the prompt's nearest map entries; "
           "`category_scores`, the same scores averaged over the routed category's entries (a control); `prompt`, "
           "the plan of the prompt's own block influence on its prefill; `prompt_oracle`, a greedy search on the "
           "prompt's own reference continuation (a ceiling, in-sample); per token, the `dynamic` gate (CALM's "
           "hidden-state saturation; an exited token skips the later of the 2n least important layers) and "
           "`dynamic_calm` (CALM's plain early exit), both set on calibration prompts to skip n layers on average; "
           "`random` layers as a control; `sublayer`, attention and MLP blocks skipped separately, as many as cost "
           "what the count of whole layers costs (measured by the engine's block clock: `cost` is every plan's measured "
           "saving in layers); `stepwise_full` is the full model scored one token at a time as the "
           "dynamic mode runs (its disagreement with the one-forward reference is rounding: the floor). Quality: "
           "top-1 agreement with the full model, teacher-forced on its own greedy continuation (95% interval over "
           "prompts); differences are paired over prompts, **bold** where the interval excludes 0. Speed: whole "
           "generation requests (prefill, routing, map lookup, the prompt's own scoring and the gate inside the "
           "clock), median of per-repeat ratios to the full model's greedy loop with the interquartile range; blank "
           "where the point was not timed (controls and ceilings). Prefill speed is in the throughput section.", ""]
    if gaps:
        out = out[:2] + out_of_sample_answer(frontier, gaps) + out[2:] + ladder_section(gaps)
    out += ["![frontier](frontier.png)", ""]
    for split, name in SPLIT_NAMES.items():
        rows = [r for r in frontier if r["split"] == split]
        if not rows:
            continue
        out += [f"{name.capitalize()}:", "",
                _table(["method", "layers", "skipped (measured)", "cost (layers)", "top-1 [95%]", "− global", "− category",
                        "KL"] + [f"speedup b{b} [IQR]" for b in sizes] + ["ideal (decode)"],
                       [[r["method"], r["n_skipped"], r["layers_skipped"], r.get("cost", ""),
                         f"{r['top1']} [{r['top1_ci_low']}, {r['top1_ci_high']}]",
                         _diff_cell(r, "minus_global_top1"), _diff_cell(r, "minus_category_top1"), r["kl"]]
                        + [_speed_cell(r, b) for b in sizes] + [r["ideal_decode_speedup"]]
                        for r in sorted(rows, key=lambda r: (int(r["n_skipped"]), r["method"]))]), ""]
    out += ["Which level wins where (top-1 agreement, paired over prompts):", "", *_ladder_words(frontier), "",
            "A difference whose interval contains 0 is no measurable difference; a speedup whose interquartile range "
            "contains 1 is within the timing noise.", ""]
    if overheads:
        out += [f"What the dynamic mode adds per token (batch 1, cached, layer {overheads['layer_index']}, median of "
                f"interleaved repeats): filling a skipped layer's keys and values costs {overheads['fill_kv_ms']} ms, "
                f"{overheads['fill_kv_fraction']:.1%} of running the layer ({overheads['layer_ms']} ms); the gate's "
                f"check after a layer {overheads['gate_ms']} ms, {overheads['gate_fraction']:.1%}. A token that skips "
                "n layers and checks the gate after g of them saves, ideally, n × (1 − fill) − g × gate layers; the "
                "`ideal (decode)` column ignores both costs.", ""]
    return out


def depth_section(depth: dict) -> list[str]:
    """Per-token depth beside FlexiDepth's numbers, and whether its orderings hold here."""
    n, flexi = depth["n_layers"], depth["flexidepth"]
    ops = depth["operations"]
    rows = [[op, v["n_items"], v["n_tokens"], f"{v['needed']:.1f} [{v['needed_ci_low']:.1f}, {v['needed_ci_high']:.1f}]",
             v["needed_fraction"], f"{v['saturation']:.1f} [{v['saturation_ci_low']:.1f}, {v['saturation_ci_high']:.1f}]",
             v["saturation_fraction"], flexi["layers_per_token"].get(op, ""), v.get("flexidepth_fraction", "")]
            for op, v in ops.items()]
    cats = [[c, v["n_items"], f"{v['needed']:.1f} [{v['needed_ci_low']:.1f}, {v['needed_ci_high']:.1f}]",
             v["needed_fraction"], f"{v['saturation']:.1f} [{v['saturation_ci_low']:.1f}, {v['saturation_ci_high']:.1f}]"]
            for c, v in depth["categories"].items()]
    order_words = []
    for measure, chains in depth["orderings"].items():
        for chain, verdict in chains.items():
            holds = ("holds, every adjacent pair's intervals apart" if verdict["intervals_apart"] else
                     "holds by the means, not beyond the intervals" if verdict["by_means"] else "does not hold")
            order_words.append(f"- {measure}: {chain} {holds}.")
    return ["## Per-token depth (stage `depth`)", "",
            f"For the full model's greedy continuation ({depth['max_new_tokens']} tokens), per generated token: "
            f"`needed` = {n} minus the layers that token alone can skip and keep its top-1 (its own least influential "
            "layers first; a skipped layer still writes its keys and values, so the cache stays complete); "
            "`saturation` = the first layer after which the logit lens always gives the final top-1. Mean over "
            "prompts of each prompt's mean, 95% bootstrap interval. FlexiDepth (Llama-3-8B-Instruct, 32 layers, "
            "trained gates) beside it, both also as fractions of the layer count.", "",
            _table(["operation", "prompts", "tokens", "needed [95%]", "needed / L", "saturation [95%]", "saturation / L",
                    f"FlexiDepth layers (of {flexi['n_layers']})", "FlexiDepth / L"], rows), "",
            "FlexiDepth's orderings here:", "", *order_words, "", "![depth](depth.png)", "",
            "Held-out prompts of seen tasks, per category:", "",
            _table(["category", "prompts", "needed [95%]", "needed / L", "saturation [95%]"], cats), "",
            "Per token: `depth_tokens.csv`.", ""]


# ---------------------------------------------------------------- one model's headline numbers, and across models

def _ci(m: dict, key: str) -> list | None:
    """[value, low, high] of an interval metric, or None where it is missing."""
    if m is None or key not in m or key + "_ci_low" not in m:
        return None
    return [m[key], m[key + "_ci_low"], m[key + "_ci_high"]]


def model_summary(reports: Path, params: dict) -> dict:
    """The numbers the cross-model comparison reads, from one model's metrics files."""
    model, validate = _json(reports / "model.json") or {}, _json(reports / "validate.json") or {}
    mc, lossless, depth = _json(reports / "multiple_choice.json"), _json(reports / "lossless.json"), _json(reports / "depth.json")
    out = {"source": get(params, "model.source"), "n_layers": model.get("n_layers"), "hidden_size": model.get("hidden_size"),
           "dtype": model.get("dtype"),
           "sizes": {"corpus": get(params, "corpus.n"), "validate_per_category": get(params, "validate.n_per_category"),
                     "multiple_choice_per_benchmark": get(params, "multiple_choice.n_per_benchmark"),
                     "depth_per_operation": get(params, "depth.n_per_operation")},
           "routed_minus_global_top1": {s: _ci(validate.get(s), "routed_minus_global_top1") for s in SPLIT_NAMES},
           "routing_accuracy": {s: _ci(validate.get(s), "routing_accuracy") for s in SPLIT_NAMES}}
    if mc:
        out["multiple_choice"] = {b: {"full_acc_norm": _ci(v, "full_acc_norm"), "chance": v.get("chance"), "n": v.get("n"),
                                      "routed_minus_global_acc_norm": _ci(v, "routed_minus_global_acc_norm")}
                                  for b, v in mc.items() if isinstance(v, dict) and "full_acc_norm" in v}
    if lossless:
        dtype = lossless["system_dtype"]
        decoders = lossless["decoders"].get(dtype, {})
        best = max((n for n in decoders if not n.startswith("generate") and n != "system"),  # the project's own
                   key=lambda n: decoders[n].get("vs_generate_bf16", decoders[n]["vs_generate_same_dtype"])["speedup"])
        pick = lambda v: v.get("vs_generate_bf16", v["vs_generate_same_dtype"])  # noqa: E731
        out["lossless"] = {"system_dtype": dtype,
                           "system_vs_bf16_generate": _ci(pick(decoders["system"]), "speedup"),
                           "best_decoder": best, "best_vs_bf16_generate": _ci(pick(decoders[best]), "speedup"),
                           "acceptance": {n: _ci(decoders[n], "per_prompt_acceptance") for n in ("routed_skip", "clasp")
                                          if n in decoders}}
    if depth:
        out["depth"] = {kind: {g: {"needed_fraction": [round(v["needed"] / depth["n_layers"], 4),
                                                       round(v["needed_ci_low"] / depth["n_layers"], 4),
                                                       round(v["needed_ci_high"] / depth["n_layers"], 4)],
                                   "saturation_fraction": v["saturation_fraction"]} for g, v in depth[kind].items()}
                        for kind in ("operations", "categories")}
    return out


def _cell(value, digits: int = 3) -> str:
    if not value:
        return ""
    text = f"{value[0]:+.{digits}f} [{value[1]:+.{digits}f}, {value[2]:+.{digits}f}]"
    return f"**{text}**" if value[1] > 0 or value[2] < 0 else text


def _plain(value, digits: int = 3) -> str:
    return f"{value[0]:.{digits}f} [{value[1]:.{digits}f}, {value[2]:.{digits}f}]" if value else ""


def _sizes(sizes: dict | None) -> str:
    """A run's evaluation sizes, short: map prompts / validation prompts per category and split /
    questions per benchmark / prompts per depth operation."""
    if not sizes:
        return ""
    return (f"map {sizes['corpus']}, validate {sizes['validate_per_category']}/cat, "
            f"MC {sizes['multiple_choice_per_benchmark']}, depth {sizes['depth_per_operation']}/op")


def models_section(summaries: list[dict]) -> list[str]:
    """Across model size: the routed − global gap, multiple choice above chance, the acceptance of
    layer-skip drafts, the best lossless speedup and per-token depth, each with its interval."""
    summaries = sorted(summaries, key=lambda s: (s.get("hidden_size") or 0, s.get("n_layers") or 0, s["source"]))
    rows = [[s["source"], s.get("n_layers"), s.get("hidden_size"), s.get("dtype"), _sizes(s.get("sizes")),
             _cell(s["routed_minus_global_top1"].get("heldout")), _cell(s["routed_minus_global_top1"].get("heldout_task")),
             _plain((s.get("lossless") or {}).get("acceptance", {}).get("routed_skip")),
             _plain((s.get("lossless") or {}).get("acceptance", {}).get("clasp")),
             _plain((s.get("lossless") or {}).get("system_vs_bf16_generate")),
             f"{(s.get('lossless') or {}).get('best_decoder', '')} {_plain((s.get('lossless') or {}).get('best_vs_bf16_generate'))}",
             _plain(((s.get("depth") or {}).get("operations") or {}).get("continue", {}).get("needed_fraction"))]
            for s in summaries]
    benchmarks = sorted({b for s in summaries for b in (s.get("multiple_choice") or {})})
    mc_rows = [[s["source"]] + [
        (lambda v: f"{_plain(v['full_acc_norm'])} (chance {v['chance']:.2f}; {v['full_acc_norm'][0] - v['chance']:+.2f})"
         if v and v.get("full_acc_norm") and v.get("chance") is not None else "")((s.get("multiple_choice") or {}).get(b))
        for b in benchmarks] for s in summaries]
    return ["## Across model size", "",
            "The same pipeline on each model (the other models' reports are in `models/<source>/`, each produced by "
            "its own run; how to rerun one is in the README). Routed − global: top-1 agreement, paired over prompts, "
            "at `skip.fraction` (**bold**: the interval excludes 0). Run sizes: a larger model may run at reduced "
            "evaluation sizes to fit the CPU (wider intervals). Acceptance: the share of drafted tokens the full "
            "model kept, mean over test prompts. Depth: the fraction of layers a token needs (`needed / L`) when "
            "continuing a paragraph.", "",
            _table(["model", "layers", "hidden", "dtype", "run sizes", "routed − global (seen tasks)",
                    "routed − global (unseen tasks)", "routed draft acceptance", "CLaSp acceptance", "lossless system vs bf16 generate",
                    "best lossless decoder vs bf16 generate",
                    "depth needed (continue)"], rows), "",
            *_scale_words(summaries), "",
            "Multiple choice, the full model's `acc_norm` [95%] and its distance from chance:", "",
            _table(["model"] + benchmarks, mc_rows), ""]


SCALE_MEASURES = (("the routed − global gap (seen tasks)", lambda s: s["routed_minus_global_top1"].get("heldout")),
                  ("the routed − global gap (unseen tasks)", lambda s: s["routed_minus_global_top1"].get("heldout_task")),
                  ("the routed draft's acceptance", lambda s: (s.get("lossless") or {}).get("acceptance", {}).get("routed_skip")),
                  ("CLaSp's acceptance", lambda s: (s.get("lossless") or {}).get("acceptance", {}).get("clasp")),
                  ("the lossless system's speedup", lambda s: (s.get("lossless") or {}).get("system_vs_bf16_generate")),
                  ("the depth a continuing token needs (fraction of layers)",
                   lambda s: ((s.get("depth") or {}).get("operations") or {}).get("continue", {}).get("needed_fraction")))


def _scale_words(summaries: list[dict]) -> list[str]:
    """In words, smallest against largest model: a measure changed with size only where the two 95%
    intervals lie apart (different prompts and models: not a paired comparison, so this is conservative)."""
    if len(summaries) < 2:
        return []
    small, large = summaries[0], summaries[-1]
    words = []
    for label, pick in SCALE_MEASURES:
        a, b = pick(small), pick(large)
        if not a or not b:
            continue
        apart = a[2] < b[1] or b[2] < a[1]
        verdict = ((("higher" if b[0] > a[0] else "lower") + f" in {large['source']}: the intervals lie apart") if apart
                   else "no measurable change with size: the intervals overlap")
        words.append(f"- {label}: {small['source']} {_plain(a)}, {large['source']} {_plain(b)}; {verdict}.")
    return ["From the smallest to the largest model (by hidden size):", "", *words] if words else []
