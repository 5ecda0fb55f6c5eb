"""A language model's corpus as lbsearch prepares it: documents and tokens per split, and the unigram
entropy of the train tokens (the loss of a model that knows only word frequencies) with the unigram
cross-entropy of the validation tokens. Nothing is timed: the figures are those of the data.

    python benchmarks/corpus.py                     # experiments/lm_tiny.yaml: the builtin speeches, a 2,048-token BPE
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from _bench import RESULTS, ROOT, experiment, machine, prepared, write


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=ROOT / "experiments" / "lm_tiny.yaml")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override an experiment field")
    ap.add_argument("--out", type=Path, default=RESULTS / "corpus_lm_tiny.json")
    args = ap.parse_args()
    exp = experiment(args.spec, {}, args.set)
    if not exp.task.endswith("_lm"):
        raise SystemExit(f"{args.spec}: task {exp.task} is not a language model: there is no corpus to describe")
    work = Path(tempfile.mkdtemp(prefix="lbsearch-corpus-"))
    data = prepared(exp, work)
    out: dict[str, Any] = {"machine": machine(), "corpus.spec": str(args.spec.relative_to(ROOT)) if args.spec.is_relative_to(ROOT) else str(args.spec),
                           "corpus.data": exp.data.model_dump(mode="json"), "corpus.digest": data.digest, "corpus.vocab_size": data.vocab_size,
                           "corpus.sequences": data.sizes, "corpus.prepared": data.corpus}
    for key, value in data.corpus.items():
        print(f"{key}: {value}")
    write(out, args.out)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
