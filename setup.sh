#!/usr/bin/env bash
# Creates .venv (if missing) and installs everything the pipeline and tests need.
# Idempotent: a second run only checks that the pins are satisfied.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-data.txt
.venv/bin/dvc config --local core.analytics false >/dev/null 2>&1 || true
