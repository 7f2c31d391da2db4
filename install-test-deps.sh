#!/usr/bin/env bash
# The first half of the README's test command (`./install-test-deps.sh && cargo nextest run
# --workspace`, which .ci/run calls as it is): installs what the tests need and is missing.
# Debian packages are installed when run as root, else named with the command to install them
# (and the script fails); cargo-nextest is built with cargo.
set -euo pipefail
cd "$(dirname "$0")"

# The tests start their own redis-server (and a 3-node cluster with redis-cli), run promtool
# and a real Prometheus, and drive the admin dashboard in headless chromium via chromedriver.
need=()
want() { command -v "$1" >/dev/null 2>&1 || need+=("$2"); }
want redis-server redis-server
want redis-cli redis-tools
want prometheus prometheus
want promtool prometheus
want chromium chromium
want chromedriver chromium-driver
if [ ${#need[@]} -gt 0 ]; then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps.sh: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "install-test-deps.sh: the tests need these Debian packages, missing here: ${need[*]}" >&2
    echo "install them with: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "install-test-deps.sh: installing cargo-nextest"
  cargo install cargo-nextest --locked
fi


# The SDK tests (proxy/tests/sdk.rs) drive keyrelay with the official Python SDKs, installed
# into a venv under the target directory, where the tests look for it.
venv="${CARGO_TARGET_DIR:-target}/sdk-venv"
if ! "$venv/bin/python" -c "import openai, anthropic, google.genai" >/dev/null 2>&1; then
  echo "install-test-deps.sh: installing the Python SDKs (openai, anthropic, google-genai) into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check openai anthropic google-genai
fi
