"""Stage `multiple_choice`: benchmark accuracy of the full model, routed hard and routed soft skip."""
from ais.api import load
from ais.atomic import write_json
from ais.multiple_choice import SOURCES, evaluate_all
from ais.params import get
from ais.report_io import write_csv

if __name__ == "__main__":
    system = load()
    params = system.params
    names = get(params, "multiple_choice.benchmarks", list)
    for name in names:
        if name not in SOURCES:
            raise SystemExit(f"multiple_choice.benchmarks: unknown {name!r}; choose from {', '.join(SOURCES)}")
    results = evaluate_all(system.decoder, system.tokenizer, names, get(params, "multiple_choice.n_per_benchmark", int, lo=1),
                           get(params, "multiple_choice.seed", int), system.decoder.settings.alpha)
    write_json("reports/multiple_choice.json", results)
    rows = []
    for name, r in results.items():
        for scoring in ("letter", "loglik"):
            rows.append({"benchmark": f"{name}/{scoring}", "n": r["n"], "chance": r["chance"],
                         **{cond: r[f"{scoring}_{cond}_accuracy"] for cond in ("full", "routed_hard", "routed_soft")}})
    write_csv("reports/multiple_choice.csv", rows)
    for row in rows:
        print(f"multiple_choice {row['benchmark']}: full {row['full']}, hard {row['routed_hard']}, "
              f"soft {row['routed_soft']} (chance {row['chance']}, n={row['n']})")
