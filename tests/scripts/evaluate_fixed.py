"""Run lbsearch's Evaluator on fixed predictions, on every rank of an ``accelerate launch``; rank 0 writes
the metrics. A real Accelerator and real collectives; only the model is a fixed table of outputs.

    accelerate launch --multi_gpu --num_processes 2 tests/scripts/evaluate_fixed.py FOLDER out.json

Each ``FOLDER/<task>-<name>.npz`` holds one case: outputs, labels, lengths, regression shift and scale.
"""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from accelerate import Accelerator

from lbsearch.data.cache import Split
from lbsearch.trial.training import Evaluator


class FixedOutputs(torch.nn.Module):
    """Example i (whose token ids start with i) gets row i of a fixed table of outputs."""

    def __init__(self, table: np.ndarray) -> None:
        super().__init__()
        self.table = torch.as_tensor(table, dtype=torch.float32)

    def forward(self, input_ids, attention_mask=None):  # no mask where a batch has no padding
        return SimpleNamespace(logits=self.table[input_ids[:, 0]])


def main(folder: str, out: str) -> None:
    acc = Accelerator(cpu=True)
    results = {}
    for case in sorted(Path(folder).glob("*.npz")):
        z = np.load(case)
        split = Split([np.array([i] + [7] * int(n)) for i, n in enumerate(z["lengths"])], z["labels"])
        info = {"names": [str(i) for i in range(z["logits"].shape[1])], "shift": float(z["shift"]), "scale": float(z["scale"])}
        evaluate = Evaluator(split, case.stem.split("-")[0], info, 0.5, 4, acc.process_index, acc.num_processes)
        results[case.stem] = evaluate(acc, FixedOutputs(z["logits"]), pad_id=0)
    if acc.is_main_process:
        Path(out).write_text(json.dumps({"world": acc.num_processes, "metrics": results}))
    acc.end_training()


if __name__ == "__main__":
    main(*sys.argv[1:])
