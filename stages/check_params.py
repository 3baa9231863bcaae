"""Stage `check_params`: check every key of params.yaml before any other stage runs, and write the
effective values of its conditional keys (data/params.effective.yaml)."""
import yaml

from ais.files import write_text
from ais.methods import check_names
from ais.model.loading import source_problem
from ais.params import EFFECTIVE_FILE, RESTORE_HINT, ParamsError, check_params, effective, get, load_params

OUT = "data/params.checked"
NOTE = ("params.yaml passed stages/check_params.py. Every stage depends on this file, so none starts, and DVC\n"
        "removes none of its outputs, before the whole params file is checked. Its content never changes.\n")

if __name__ == "__main__":
    params = load_params()
    check_params(params)
    problems = check_names(params) + [p for p in [source_problem(get(params, "model.source"))] if p]
    if problems:
        raise ParamsError("; ".join(problems) + f". {RESTORE_HINT}")
    write_text(OUT, NOTE)
    write_text(EFFECTIVE_FILE, "# the effective values of params.yaml's conditional keys (ais.params.EFFECTIVE), written by\n"
                               "# stages/check_params.py: stages that use a key only under a condition declare these\n"
                               + yaml.safe_dump(effective(params), sort_keys=True))
    print("check_params: params.yaml is valid")
