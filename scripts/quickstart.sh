#!/usr/bin/env bash
# The quickstart: install if needed, run the study, show the best trial, reproduce it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
LB="${LBSEARCH_VENV:-.venv}/bin/lbsearch"
start=$(date +%s)
"$LB" run studies/quickstart.yaml "$@"
echo "study wall time: $(( $(date +%s) - start )) s"
"$LB" status quickstart
"$LB" best quickstart
"$LB" reproduce quickstart
