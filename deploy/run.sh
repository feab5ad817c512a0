#!/usr/bin/env bash
# The README's two commands, each doing its own setup on a fresh machine:
#   bash deploy/run.sh demo [flywheel demo options]   # the whole flywheel, end to end
#   bash deploy/run.sh test [pytest options]          # the whole test suite
#   bash deploy/run.sh screenshot                     # refresh the README's dashboard picture
# Setup: a project venv in .venv (Python 3.11, uv), Debian packages the stack and the
# browser test need (redis-server, chromium, chromium-driver; only when missing and
# root), Maven-fetched jars (cached in ~/.cache/flywheel), then the local stack.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="$repo/.venv"
python_bin="${FLYWHEEL_PYTHON:-}"

log() { printf '[flywheel] %s\n' "$*" >&2; }

find_python() {
  if [[ -n "$python_bin" ]]; then echo "$python_bin"; return; fi
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      command -v "$candidate"; return
    fi
  done
  log "Python 3.11 is required (PyFlink 1.20 supports up to 3.11); set FLYWHEEL_PYTHON"
  exit 1
}

ensure_apt_packages() {
  local missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  if [[ "${1:-}" == "test" ]]; then
    [[ -x /usr/bin/chromium ]] || missing+=(chromium)
    [[ -x /usr/bin/chromedriver ]] || missing+=(chromium-driver)
  fi
  command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || missing+=(maven)
  if ((${#missing[@]})); then
    if [[ "$(id -u)" != "0" ]]; then
      log "missing Debian packages: ${missing[*]} (install them with sudo apt-get install)"
      exit 1
    fi
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

ensure_venv() {
  local stamp="$venv/.flywheel-installed"
  local want
  want="$(sha256sum pyproject.toml | cut -c1-16)"
  if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return
  fi
  local py
  py="$(find_python)"
  log "creating the project venv in .venv with $py (first run downloads PyFlink and torch)"
  [[ -x "$venv/bin/python" ]] || "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check uv
  "$venv/bin/uv" pip install -q --python "$venv/bin/python" -e ".[test]"
  echo "$want" > "$stamp"
}

cmd="${1:-}"
shift || true
case "$cmd" in
  demo)
    ensure_apt_packages demo
    ensure_venv
    exec "$venv/bin/flywheel" demo "$@"
    ;;
  test)
    ensure_apt_packages test
    ensure_venv
    # Reuse a running stack; one started here is stopped when the tests end.
    started_stack=0
    if ! "$venv/bin/flywheel" stack status --no-health >/dev/null 2>&1; then
      started_stack=1
    fi
    "$venv/bin/flywheel" stack up
    export FLYWHEEL_TEST_KEEP_STACK=1
    # A crash, even after the last test, explains itself: Python's stack of every thread
    # on a fatal signal (-X faulthandler, for this process only: PYTHONFAULTHANDLER would
    # reach the Flink JVM's embedded Python, whose handler then takes the JVM's own
    # SIGSEGVs and kills it), and a core file (`core` in the repo root, ignored by git).
    ulimit -c unlimited 2>/dev/null || true
    status=0
    "$venv/bin/python" -X faulthandler -m pytest "$@" || status=$?
    if [[ "$started_stack" == 1 ]]; then
      "$venv/bin/flywheel" stack down || true
    fi
    exit "$status"
    ;;
  screenshot)
    # Refresh the README's dashboard screenshot (the test suite writes its own to a temp dir).
    FLYWHEEL_REFRESH_SCREENSHOT=1 exec bash "$repo/deploy/run.sh" test \
      tests/browser/test_dashboard_browser.py -k screenshot "$@"
    ;;
  *)
    echo "usage: bash deploy/run.sh demo|test|screenshot [options]" >&2
    exit 2
    ;;
esac
