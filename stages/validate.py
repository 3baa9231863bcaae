"""Stage `validate`: quality of routed hard / soft skipping against the full model on held-out prompts."""
from pathlib import Path

from ais.api import load
from ais.files import write_json
from ais.routing.corpus import prompts_by_category, read_corpus
from ais.params import get
from ais.files import write_csv
from ais.evaluation.validation import validate

if __name__ == "__main__":
    system = load()
    params = system.params
    n = get(params, "validate.n_per_category")
    by_category = prompts_by_category(read_corpus(Path("data/corpus.jsonl")), "heldout", n)
    overall, per_category = validate(system.decoder, system.tokenizer, by_category,
                                     get(params, "validate.n_continuation"), get(params, "validate.seed"))
    write_json("reports/validate.json", overall)
    write_csv("reports/validate_per_category.csv", per_category)
    print("validate: " + ", ".join(f"{k} {v}" for k, v in overall.items()))
