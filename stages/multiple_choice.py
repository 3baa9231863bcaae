"""Stage `multiple_choice`: benchmark accuracy of the full model and the routed plan in `skip.mode`
(and the same layers in the other mode)."""
from ais.api import load
from ais.files import write_json
from ais.evaluation.multiple_choice import evaluate_all
from ais.params import get
from ais.routing.plans import OTHER_MODE
from ais.files import write_csv

if __name__ == "__main__":
    system = load()
    params = system.params
    names = get(params, "multiple_choice.benchmarks")
    results = evaluate_all(system.decoder, system.tokenizer, names, get(params, "multiple_choice.n_per_benchmark"),
                           get(params, "multiple_choice.seed"))
    write_json("reports/multiple_choice.json", results)
    other = OTHER_MODE[system.decoder.settings.mode]
    rows = []
    for name, r in results.items():
        for scoring in ("letter", "loglik"):
            rows.append({"benchmark": f"{name}/{scoring}", "n": r["n"], "chance": r["chance"],
                         **{cond: r[f"{scoring}_{cond}_accuracy"] for cond in ("full", "routed", f"routed_{other}")}})
    write_csv("reports/multiple_choice.csv", rows)
    for row in rows:
        print(f"multiple_choice {row['benchmark']}: full {row['full']}, routed ({system.decoder.settings.mode}) "
              f"{row['routed']}, routed_{other} {row[f'routed_{other}']} (chance {row['chance']}, n={row['n']})")
