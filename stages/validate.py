"""Stage `validate`: quality of routed hard / soft skipping against the full model on held-out prompts."""
from pathlib import Path

from ais.api import load
from ais.atomic import write_json
from ais.corpus import prompts_by_category, read_corpus
from ais.params import get
from ais.report_io import write_csv
from ais.validation import validate

if __name__ == "__main__":
    system = load()
    params = system.params
    n = get(params, "validate.n_per_category", int, lo=1)
    by_category = prompts_by_category(read_corpus(Path("data/corpus.jsonl")), "heldout", n)
    overall, per_category = validate(system.decoder, system.tokenizer, by_category,
                                     get(params, "validate.n_continuation", int, lo=0), get(params, "validate.seed", int))
    write_json("reports/validate.json", overall)
    write_csv("reports/validate_per_category.csv", per_category)
    print("validate: " + ", ".join(f"{k} {v}" for k, v in overall.items()))
