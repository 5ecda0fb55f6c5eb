#!/usr/bin/env bash
# The test suite: install if needed, then pytest (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "${LBSEARCH_VENV:-.venv}/bin/python" -m pytest -q "$@"
