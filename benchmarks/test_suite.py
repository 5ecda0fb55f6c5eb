"""How long the test suite takes, file by file, and what it covers: from a clean clone, as CI runs it.

    python benchmarks/test_suite.py --rev HEAD --repeat 3 --out benchmarks/results/test_suite.json
    python benchmarks/test_suite.py --rev HEAD --cov --out benchmarks/results/test_suite_cov.json
    python benchmarks/test_suite.py --compare before.json after.json

A run clones the repository at ``--rev`` into a temporary folder and runs ``bash scripts/test.sh`` there
``--repeat`` times in a row (the first run installs the clone's virtual environment; its install is
outside pytest's time). Each run records: the wall seconds of the command, pytest's own seconds,
the counts (passed, failed, skipped, errors), the seconds of each test file (the sum of its tests'
setup, call and teardown, on whichever xdist worker ran it) and the 15 slowest tests; ``--cov``
adds the line coverage of each module (trial processes and CLI runs included: pyproject's
``[tool.coverage.run]``), which slows the run, so its times are not the suite's.

``--ingest JUNIT [--ingest-cov COV_JSON] --command CMD --seconds S``: a record of a run made by hand
with ``scripts/test.sh --junitxml=JUNIT [--cov=lbsearch --cov-report=json:COV_JSON]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _bench import machine, write  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def from_junit(junit: Path) -> dict:
    """Counts, pytest's seconds, seconds per test file and the slowest tests of one junit report."""
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    per_file: dict[str, float] = defaultdict(float)
    tests_per_file: dict[str, int] = defaultdict(int)
    tests, not_passed, counts = [], [], {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    for case in suite.iter("testcase"):
        path = case.get("file") or case.get("classname", "").replace(".", "/") + ".py"
        seconds = float(case.get("time") or 0)
        per_file[path] += seconds
        tests_per_file[path] += 1
        tests.append((seconds, f"{path}::{case.get('name')}"))
        kind = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        counts[{"failure": "failed", "error": "errors"}.get(kind, kind)] += 1
        if kind != "passed":
            detail = next(c for c in case if c.tag == kind)
            not_passed.append(f"{kind} {path}::{case.get('name')}: {(detail.get('message') or '')[:300]}")
    return {"pytest_seconds": float(suite.get("time") or 0), "tests": len(tests), **counts,
            "seconds_per_file": {k: round(v, 1) for k, v in sorted(per_file.items(), key=lambda kv: -kv[1])},
            "tests_per_file": dict(tests_per_file),
            "slowest": [[round(s, 1), name] for s, name in sorted(tests, reverse=True)[:15]], "not_passed": not_passed}


def from_coverage(cov: Path) -> dict:
    data = json.loads(cov.read_text())
    return {"total_percent": round(data["totals"]["percent_covered"], 2),
            "percent_per_module": {f: round(v["summary"]["percent_covered"], 2) for f, v in sorted(data["files"].items())},
            "missing_lines_per_module": {f: v["missing_lines"] for f, v in sorted(data["files"].items()) if v["missing_lines"]}}


def run_suite(clone: Path, work: Path, i: int, cov: bool) -> dict:
    junit, cov_json = work / f"junit-{i}.xml", work / f"coverage-{i}.json"
    extra = [f"--junitxml={junit}"] + (["--cov=lbsearch", f"--cov-report=json:{cov_json}"] if cov else [])
    command = ["bash", "scripts/test.sh", *extra]
    install = subprocess.run(["bash", "scripts/install.sh"], cwd=clone, capture_output=True, text=True)  # outside the timing
    if install.returncode:
        raise SystemExit(f"install failed:\n{install.stderr[-3000:]}")
    load, t0 = list(os.getloadavg()), time.perf_counter()
    proc = subprocess.run(command, cwd=clone, capture_output=True, text=True)
    record = {"command": " ".join(command), "exit_code": proc.returncode, "wall_seconds": round(time.perf_counter() - t0, 1),
              "load_average_at_start": load, "summary_line": (proc.stdout.strip().splitlines() or [""])[-1]}
    if junit.exists():
        record |= from_junit(junit)
    if cov and cov_json.exists():
        record["coverage"] = from_coverage(cov_json)
    return record


def compare(before: dict, after: dict) -> str:
    """Per-file seconds and per-module coverage, side by side (the first run of each record)."""
    b, a = before["runs"][0], after["runs"][0]
    lines = [f"tests {b['tests']} -> {a['tests']}; pytest seconds {b['pytest_seconds']:.0f} -> {a['pytest_seconds']:.0f}", "",
             f"{'seconds per file':60} {'before':>8} {'after':>8}"]
    for f in sorted(set(b["seconds_per_file"]) | set(a["seconds_per_file"]), key=lambda f: -b["seconds_per_file"].get(f, 0)):
        lines.append(f"{f:60} {b['seconds_per_file'].get(f, 0):8.1f} {a['seconds_per_file'].get(f, 0):8.1f}")
    if "coverage" in b and "coverage" in a:
        cb, ca = b["coverage"]["percent_per_module"], a["coverage"]["percent_per_module"]
        lines += ["", f"line coverage: {b['coverage']['total_percent']}% -> {a['coverage']['total_percent']}%", f"{'module':60} {'before':>8} {'after':>8}"]
        for m in sorted(set(cb) | set(ca)):
            flag = "  <- lost more than 2 points" if cb.get(m, 0) - ca.get(m, 0) > 2 else ""
            lines.append(f"{m:60} {cb.get(m, 0):8.1f} {ca.get(m, 0):8.1f}{flag}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--rev", default="HEAD", help="the commit to clone and test (default: HEAD)")
    p.add_argument("--repeat", type=int, default=1, help="runs in a row (flakiness: every run must pass)")
    p.add_argument("--cov", action="store_true", help="measure line coverage per module (slower: its times are not the suite's)")
    p.add_argument("--out", type=Path, help="the JSON to write")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"), help="print two records side by side")
    p.add_argument("--ingest", type=Path, metavar="JUNIT", help="record a run made by hand from its junit report")
    p.add_argument("--ingest-cov", type=Path, metavar="COV_JSON")
    p.add_argument("--command", help="with --ingest: the command that was run")
    p.add_argument("--seconds", type=float, help="with --ingest: its wall seconds")
    args = p.parse_args()
    if args.compare:
        print(compare(*(json.loads(f.read_text()) for f in args.compare)))
        return 0
    if not args.out:
        p.error("--out is required")
    args.out = args.out.resolve()
    rev = subprocess.run(["git", "rev-parse", args.rev], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    out = {"benchmark": "test_suite", "rev": rev, "machine": machine(), "command": " ".join([sys.executable, *sys.argv])}
    if args.ingest:
        run = {"command": args.command, "wall_seconds": args.seconds, **from_junit(args.ingest)}
        if args.ingest_cov:
            run["coverage"] = from_coverage(args.ingest_cov)
        out["runs"] = [run]
    else:
        with tempfile.TemporaryDirectory(prefix="lbsearch-suite-") as tmp:
            clone = Path(tmp) / "repo"
            subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
            subprocess.run(["git", "checkout", "-q", rev], cwd=clone, check=True)
            out["runs"] = []
            for i in range(args.repeat):
                out["runs"].append(run_suite(clone, Path(tmp), i, args.cov))
                write(out, args.out)  # each run lands as it ends
                r = out["runs"][-1]
                print(f"run {i + 1}: exit {r['exit_code']}, {r['wall_seconds']:.0f} s, {r.get('tests')} tests, "
                      f"{r.get('failed')} failed, {r.get('skipped')} skipped", flush=True)
    write(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
