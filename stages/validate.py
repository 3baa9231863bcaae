"""Stage `validate`: quality of routed skipping against the full model on held-out prompts of seen
tasks and of unseen tasks, with oracle, global and random controls and paired intervals."""
from pathlib import Path

from ais.api import load
from ais.evaluation.references import FILE as REFERENCE, References
from ais.evaluation.validation import validate
from ais.files import write_csv, write_json
from ais.params import get
from ais.routing.corpus import prompts_by_category, read_corpus

SPLITS = ("heldout", "heldout_task")

if __name__ == "__main__":
    system = load()
    params = system.params
    n = get(params, "validate.n_per_category")
    corpus = read_corpus(Path("data/corpus.jsonl"))
    by_split = {split: prompts_by_category(corpus, split, n) for split in SPLITS}
    calibration = prompts_by_category(corpus, "importance")  # for methods that calibrate (never evaluated)
    metrics, per_category, per_prompt = validate(system.decoder, system.tokenizer, by_split,
                                                 get(params, "validate.methods"), None,
                                                 get(params, "validate.seed"), calibration,
                                                 references=References(REFERENCE, system.decoder.engine))
    write_json("reports/validate.json", metrics)
    write_csv("reports/validate_per_category.csv", per_category)
    write_csv("reports/validate_prompts.csv", per_prompt)
    for split in SPLITS:
        m = metrics[split]
        print(f"validate {split}: routing {m['routing_accuracy']}, routed top-1 {m['routed_top1']}, "
              f"routed-global {m['routed_minus_global_top1']} [{m['routed_minus_global_top1_ci_low']}, "
              f"{m['routed_minus_global_top1_ci_high']}]")
