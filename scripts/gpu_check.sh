#!/usr/bin/env bash
# The GPU figures in one run (under 10 minutes on one H100 or H200: the device tool's limit per command), each script time-boxed so that a
# slow one leaves the others their share:
#   - benchmarks/mfu.py: a MiniLM-L6-shaped encoder (random init, so it needs only the tokenizer) at 2 and
#     6 layers, fp32 / bf16 / bf16+compile, compiled-vs-eager losses, a profile of one bf16 step on the GPU;
#   - benchmarks/gpu.py: steady state of BERT-base (L 128, B 256) and a GPT-2-small decoder (L 1,024, packed), bf16 /
#     bf16+compile / fp16 beside a bare PyTorch loop, host syncs per step, a 4-trial study beside HF's hyperparameter_search,
#     a DeepSpeed ZeRO-2 trial (experiments/accelerate/deepspeed_zero2.yaml) stopped and resumed, beside the same trial
#     without DeepSpeed (needs `deepspeed` installed: pip install 'lbsearch[deepspeed]'; else its stage says so, exit 1);
#     it comes after the study and is skipped if the deadline is near: alone, `python benchmarks/gpu.py --only deepspeed`.
# Results go to $OUT (default benchmarks/results): gpu_steady.json, mfu_gpu.json and their logs (the H200 run's are
# committed as benchmarks/results/gpu_h200.json and mfu_h200.json).
#   bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
"$PY" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
rc=0
MINILM='{hidden_size: 384, num_attention_heads: 12, intermediate_size: 1536, max_position_embeddings: 512}'
timeout "${MFU_PY_S:-150}" "$PY" benchmarks/mfu.py --layers 2 6 --batch-size 256 --steps 60 --eval-every-steps 10 --repeats 1 \
  --set model.source=random --set "model.config=$MINILM" --set launcher.max_micro_batch=256 \
  --out "$OUT/mfu_gpu.json" 2>&1 | tee "$OUT/mfu_gpu.log" || rc=1
timeout "${GPU_PY_S:-420}" "$PY" benchmarks/gpu.py --deadline-s "${GPU_DEADLINE_S:-360}" --out "$OUT/gpu_steady.json" 2>&1 | tee "$OUT/gpu.log" || rc=1
exit $rc
