"""Stage `multiple_choice`: benchmark accuracy (lm-evaluation-harness, its own task definitions,
zero-shot) of the full model and, in `skip.mode`, the routed plan and the global and random controls
with as many layers; paired intervals per question."""
from ais.api import load
from ais.evaluation.multiple_choice import evaluate, skip_conditions, table
from ais.files import write_csv, write_json
from ais.params import get

DATA = "data/benchmarks"

if __name__ == "__main__":
    system = load()
    params = system.params
    names = get(params, "multiple_choice.benchmarks")
    conditions, routes = skip_conditions(system.decoder, system.tokenizer, get(params, "validate.seed"),
                                         get(params, "multiple_choice.methods"))
    metrics, questions = evaluate(system.model, system.tokenizer, DATA, names, conditions, routes,
                                  batch_size=get(params, "multiple_choice.batch_size"),
                                  seed=get(params, "multiple_choice.seed"))
    write_json("reports/multiple_choice.json", {"mode": system.decoder.settings.mode, **metrics})
    write_csv("reports/multiple_choice.csv", table(metrics, list(conditions)))
    write_csv("reports/multiple_choice_questions.csv", questions)
    for name in names:
        m = metrics[name]
        print(f"multiple_choice {name} ({m['split']}, n={m['n']}): full acc_norm {m['full_acc_norm']} "
              f"[{m['full_acc_norm_ci_low']}, {m['full_acc_norm_ci_high']}] (card {m.get('published_acc_norm')}); "
              f"routed-full {m['routed_minus_full_acc_norm']}, routed-global {m['routed_minus_global_acc_norm']} "
              f"[{m['routed_minus_global_acc_norm_ci_low']}, {m['routed_minus_global_acc_norm_ci_high']}]")
