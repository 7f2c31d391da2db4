#!/usr/bin/env bash
# Fuzz every target for SECONDS each (default 60): config parsing, HTTP/1 request heads and
# bodies (keyrelay's own path), header rewriting, rate-limit
# header parsing, URL joining (fuzz/src/targets.rs), from the seed corpora in fuzz/corpus/.
#
#   bench/fuzz.sh [SECONDS] [SEED]
#
# Engine: AFL++ (coverage-guided) when `cargo afl` is installed (cargo install cargo-afl; it
# builds AFL++ on first use), else the stable-Rust random-mutation driver; FUZZ_ENGINE=stable or
# FUZZ_ENGINE=afl forces one. Findings: fuzz/artifacts/<target>/ (stable) or
# fuzz/afl-out/<target>/default/crashes/ (AFL++). Exits 1 if any target found something.
# Runs only local processes, each bounded by SECONDS; stops nothing it did not start.
set -euo pipefail
each="${1:-60}"
seed="${2:-$(date +%s)}"
cd "$(dirname "$0")/.."
targets=(config h1 headers ratelimit upstream url)
engine="${FUZZ_ENGINE:-auto}"
if [[ "$engine" == auto ]]; then
  if cargo afl --version >/dev/null 2>&1; then engine=afl; else engine=stable; fi
fi
found=0
if [[ "$engine" == afl ]]; then
  # A target dir of its own: instrumented builds would otherwise evict the normal ones.
  export CARGO_TARGET_DIR=target/afl
  cargo afl build --release -p keyrelay-fuzz --features afl --bin afl
  for t in "${targets[@]}"; do
    out="fuzz/afl-out/$t"
    rm -rf "$out"
    mkdir -p fuzz/afl-out
    AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1 \
      cargo afl fuzz -i "fuzz/corpus/$t" -o "$out" -V "$each" -s "$seed" target/afl/release/afl "$t" \
      >"$out.log" 2>&1 || true
    stats="$out/default/fuzzer_stats"
    execs=$(awk -F: '/^execs_done/ {gsub(/ /,"",$2); print $2}' "$stats" 2>/dev/null || echo "?")
    paths=$(awk -F: '/^corpus_count/ {gsub(/ /,"",$2); print $2}' "$stats" 2>/dev/null || echo "?")
    crashes=$(find "$out/default/crashes" -type f -name 'id:*' 2>/dev/null | wc -l)
    echo "$t: afl++ $execs executions in $each s, corpus $paths, crashes $crashes"
    [[ "$crashes" == 0 ]] || found=1
  done
else
  cargo build --release -p keyrelay-fuzz --bins
  for t in "${targets[@]}"; do
    "target/release/$t" "$each" "$seed" || found=1
  done
fi
exit "$found"
