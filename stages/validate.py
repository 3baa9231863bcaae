"""Stage `validate`: quality of routed hard / soft skipping against the full model on held-out prompts."""
from pathlib import Path

from ais.api import load
from ais.atomic import write_json
from ais.corpus import read_corpus
from ais.params import get
from ais.report_io import write_csv
from ais.validation import validate

if __name__ == "__main__":
    system = load()
    params = system.params
    n = get(params, "validate.n_per_category", int, lo=1)
    by_category: dict[str, list[str]] = {}
    for row in read_corpus(Path("data/corpus.jsonl"), split="heldout"):
        if len(by_category.setdefault(row["category"], [])) < n:
            by_category[row["category"]].append(row["prompt"])
    overall, per_category = validate(system.decoder, system.tokenizer, by_category,
                                     get(params, "validate.n_continuation", int, lo=0), get(params, "validate.seed", int))
    write_json("reports/validate.json", overall)
    write_csv("reports/validate_per_category.csv", per_category)
    print("validate: " + ", ".join(f"{k} {v}" for k, v in overall.items()))
