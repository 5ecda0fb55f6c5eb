"""``lbsearch branch STUDY --trial N``: branch a reference trial from its kept checkpoints at k·B and write the
critical-batch-size report (``lbsearch.orchestrator.branch``; docs/critical_batch.md)."""

from __future__ import annotations

import argparse

__all__ = ["add_branch", "cmd_branch"]


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of whole numbers, got {text!r}") from None


def add_branch(ap: argparse.ArgumentParser, sub, common) -> argparse.ArgumentParser:
    """Add the ``branch`` command to the subparsers ``sub`` of ``ap`` (``common``: the state options); returns ``ap``."""
    p = sub.add_parser("branch", help="the critical batch size over training: branches of a trial at k·B from its kept checkpoints, and the CBS report")
    p.add_argument("study", help="the reference trial's study")
    p.add_argument("--trial", type=int, required=True, help="the reference trial (it kept checkpoints at `experiment.branching.keep_at`)")
    p.add_argument("--k", type=_ints, default="1,2,4,8,16", metavar="K,K,...", help="branch batch multiples of the reference's B (default %(default)s; 1 must be among them)")
    p.add_argument("--delta", type=int, default=None, metavar="N", help="tokens (language models) or samples (classifiers) each branch trains: "
                   "a multiple of the largest k·B")
    p.add_argument("--seeds", type=int, default=2, help="seeds per branch, the reference's first (its own continuation at k = 1; default %(default)s)")
    p.add_argument("--rule", default="sqrt", help="lr at k·B: sqrt (lr·√k, for Adam), linear (lr·k) or none (default %(default)s)")
    p.add_argument("--eps", type=float, default=None, help="the loss tolerance of CBS (default: a multiple of the pooled standard deviation of the seeds, lbsearch/science/cbs.py)")
    p.add_argument("--b-crit", type=float, default=None, metavar="B", help="the batch ladder's B_crit (tokens / samples), drawn beside CBS(t)")
    p.add_argument("--name", default=None, help="the branch study's name (default <study>-branch-<trial>)")
    p.add_argument("--parallel", type=int, default=1, metavar="N", help="branches at once on this host, each on its own devices "
                   "(cores on a CPU, `launcher.processes` GPUs each; default %(default)s; docs/scale_out.md)")
    p.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)  # a --parallel worker: the report is its parent's
    common(p)
    return ap


def cmd_branch(args, session) -> int:
    from lbsearch.orchestrator import BranchArgs, run_branches
    from lbsearch.spec import SpecError

    if args.parallel < 1:
        raise SpecError(None, "--parallel", f"must be at least 1, got {args.parallel}")
    a = BranchArgs(trial=args.trial, k=args.k, delta=args.delta, seeds=args.seeds, rule=args.rule, eps=args.eps, b_crit=args.b_crit, name=args.name)
    return run_branches(session, args.study, a, parallel=args.parallel, argv=args.argv, report=not args.no_report)
