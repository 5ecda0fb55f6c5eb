#!/usr/bin/env bash
# The test suite: install if needed, then pytest (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh

# The browser test drives Debian's chromium through chromium-driver (no browser download). Installed
# here when missing and apt-get works (as root, or with password-less sudo); otherwise that test skips
# and says why. A machine that has both returns at once. LBSEARCH_NO_BROWSER=1: never install.
browser() {
  command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && return 0
  local why=""
  if [ "${LBSEARCH_NO_BROWSER:-0}" = 1 ]; then why="LBSEARCH_NO_BROWSER=1"
  elif ! command -v apt-get >/dev/null 2>&1; then why="no apt-get on this machine"
  fi
  local sudo=()
  if [ -z "$why" ] && [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo=(sudo -n); else why="not root and no password-less sudo"; fi
  fi
  if [ -n "$why" ]; then
    echo "lbsearch: chromium / chromium-driver not installed ($why): the browser test will skip" >&2
    return 0
  fi
  echo "lbsearch: installing chromium and chromium-driver (apt-get) for the browser test ..." >&2
  local get=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -q --no-install-recommends)
  if ! "${get[@]}" install chromium chromium-driver >/dev/null 2>&1; then
    # package lists may be missing or stale (a fresh container): refresh them once and retry
    "${sudo[@]}" apt-get update -q >/dev/null 2>&1 && "${get[@]}" install chromium chromium-driver >/dev/null 2>&1 \
      || echo "lbsearch: apt-get could not install chromium / chromium-driver: the browser test will skip" >&2
  fi
}
browser

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Test files run in parallel, one pytest-xdist worker per core (LBSEARCH_TEST_WORKERS=N to choose, 0 for
# none). Most of a test's time is process start-up and imports, one core's work, so two at a time on two
# cores nearly halve the wall time. Each file stays on one worker (its module fixtures are shared), and
# each test's torch uses one thread, so that parallel tests never oversubscribe the cores.
workers="${LBSEARCH_TEST_WORKERS:-auto}"
parallel=()
if [ "$workers" != 0 ]; then
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  parallel=(-n "$workers" --dist loadfile)
fi
# The 15 slowest tests and the skip count close the report (tests/conftest.py), so that a slow or skipped test is seen.
exec "${LBSEARCH_VENV:-.venv}/bin/python" -m pytest -q --durations=15 "${parallel[@]}" "$@"
