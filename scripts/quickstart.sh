#!/usr/bin/env bash
# The quickstart: install if needed, run the study, show the best trial, reproduce it, classify two reviews with its model.
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
printf 'a warm, funny and moving film\nthe plot is a mess and the jokes fall flat\n' > mlruns/quickstart-reviews.txt
"$LB" predict quickstart mlruns/quickstart-reviews.txt
