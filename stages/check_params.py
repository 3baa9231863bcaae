"""Stage `check_params`: check every key of params.yaml before any other stage runs."""
from ais.files import write_text
from ais.params import check_params, load_params

OUT = "data/params.checked"
NOTE = ("params.yaml passed stages/check_params.py. Every stage depends on this file, so none starts, and DVC\n"
        "removes none of its outputs, before the whole params file is checked. Its content never changes.\n")

if __name__ == "__main__":
    check_params(load_params())
    write_text(OUT, NOTE)
    print("check_params: params.yaml is valid")
