#!/usr/bin/env bash
# The 7B→70B ladder on a bare CUDA machine (the `device` tool's H100/H200), in stages that each fit
# in one 10-minute call; state lives in $PG_STATE between calls.
#
#   benchmarks/gpu_ladder.sh setup            # install carried wheels (every call)
#   benchmarks/gpu_ladder.sh build            # build the vendored llama.cpp three ways (background)
#   benchmarks/gpu_ladder.sh wait [SECONDS]   # wait for the builds
#   benchmarks/gpu_ladder.sh measure 7B 13B   # synthesize, bench run (all builds), llama-bench, delete
#   benchmarks/gpu_ladder.sh report           # import llama-bench, export JSON + store + logs to $OUT
#
# Builds (the seed bug, CUDA edition: GPU code that cannot run on this GPU):
#   good    -DCMAKE_CUDA_ARCHITECTURES=90         the baseline: SASS + PTX for Hopper
#   broken  -DCMAKE_CUDA_ARCHITECTURES=80-real    Ampere SASS only, no PTX: no kernel can run on sm_90
#   fixed   -DCMAKE_CUDA_ARCHITECTURES=90-real    the broken build's architecture list corrected
# Carried (ignored) inputs: .gpu/llama.cpp-src.tar.gz (the sdist's vendor/llama.cpp), .gpu/whl (perfgate's
# dependencies as py3.12 wheels), .gpu/py/llama_cpp (llama-cpp-python's Python files; libllama comes from
# each build through LLAMA_CPP_LIB_PATH); benchmarks/prepare_gpu_carry.sh makes them. Then, with the device
# tool: run `bash benchmarks/gpu_ladder.sh build 520` carrying .gpu, then `wait 330`, `measure 7B 13B`,
# `measure 34B 70B`, `report` (files come back from $OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
S=${PG_STATE:-/root/pg}
OUT=${OUT:-$S/out}
mkdir -p "$S" "$OUT" "$S/models"
export PYTHONPATH=/tmp/site:$REPO/.gpu/py:$REPO PYTHONUNBUFFERED=1
PY=$(command -v python3)
bench() { "$PY" -m bench "$@"; }

setup() {
  [ -d /tmp/site/sqlalchemy ] || "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .gpu/whl/*.whl
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  df -h "$S" | tail -1
}

build_one() {  # name, arch list, extra cmake args...
  local name=$1 arch=$2; shift 2
  [ -f "$S/build-$name/done" ] && return 0
  cmake -S "$S/llama.cpp" -B "$S/build-$name" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$arch" -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF "$@" >"$S/build-$name.log" 2>&1
  cmake --build "$S/build-$name" --target llama-bench -j "$(nproc)" >>"$S/build-$name.log" 2>&1
  touch "$S/build-$name/done"
}

build() {
  [ -d "$S/llama.cpp" ] || tar -xzf .gpu/llama.cpp-src.tar.gz -C "$S"
  export -f build_one; export S
  # one after another, most needed first; in the background so it outlives this call's 10 minutes
  setsid nohup bash -c 'build_one good 90 && build_one broken 80-real -DGGML_CUDA_FA=OFF && build_one fixed 90-real' \
    >"$S/builds.log" 2>&1 < /dev/null &
  echo "builds started"
}

wait_builds() {
  local limit=${1:-500} start=$SECONDS
  while [ $((SECONDS - start)) -lt "$limit" ]; do
    local done=0
    for b in good broken fixed; do [ -f "$S/build-$b/done" ] && done=$((done + 1)); done
    [ $done -eq 3 ] && break
    sleep 10
  done
  for b in good broken fixed; do
    printf '%s: %s | %s\n' "$b" "$([ -f "$S/build-$b/done" ] && echo built || echo pending)" \
      "$(tail -c 160 "$S/build-$b.log" 2>/dev/null | tr '\n' ' ')"
  done
}

ladder_config() {  # size → config path
  local size=$1 cfg="$S/ladder-$1.yaml"
  {
    echo "models:"
    echo "  - {name: $size-Q4_0, path: $S/models/$size-Q4_0.gguf, timeout_s: 900}"
    echo "builds:"
    for b in good broken fixed; do
      [ -f "$S/build-$b/done" ] && echo "  - {name: $b, python: $PY, lib: $S/build-$b/bin}"
    done
    echo "suite: {n_prompt: 512, n_gen: 128, repetitions: 5, warmup: 1, n_gpu_layers: all}"
  } >"$cfg"
  echo "$cfg"
}

measure() {
  for size in "$@"; do
    local model="$S/models/$size-Q4_0.gguf" t0=$SECONDS
    bench synth --shape "$size" --quant Q4_0 --out "$model"
    echo "$size: synthesized in $((SECONDS - t0)) s"
    bench run --config "$(ladder_config "$size")" --db "$S/gpu.sqlite" --quiet 2>&1 | tail -3
    echo "$size: perfgate done at $((SECONDS - t0)) s"
    "$S/build-good/bin/llama-bench" -m "$model" -ngl 99 -p 512 -n 128 -r 5 -o json \
      >"$S/llama-bench-$size.json" 2>"$S/llama-bench-$size.log" || echo "llama-bench failed: $?"
    echo "$size: llama-bench done at $((SECONDS - t0)) s"
    rm -f "$model"
  done
}

report() {
  if [ ! -f "$S/imported" ]; then  # once: a second report must not import twice
    for f in "$S"/llama-bench-*.json; do
      [ -s "$f" ] && bench import "$f" --format llama-bench --build llama-bench-good --db "$S/gpu.sqlite"
    done
    touch "$S/imported"
  fi
  bench results --all --format json --logs --db "$S/gpu.sqlite" >"$OUT/gpu_ladder.json"
  "$PY" - "$S" "$OUT/llama_bench.json" <<'PYEOF'
import json, sys
from pathlib import Path
tests = []
for f in sorted(Path(sys.argv[1]).glob("llama-bench-*.json")):
    if f.stat().st_size:
        tests += json.loads(f.read_text())
Path(sys.argv[2]).write_text(json.dumps(tests, indent=1))
PYEOF
  cp "$S/gpu.sqlite" "$OUT/gpu.sqlite"
  tar -czf "$OUT/logs.tar.gz" -C "$S" $(cd "$S" && ls *.log ladder-*.yaml 2>/dev/null)
  for cand in broken fixed; do
    bench gate --baseline good --candidate "$cand" --db "$S/gpu.sqlite" \
      --junit "$OUT/gate-$cand.xml" --summary "$OUT/gate-$cand.md" >/dev/null 2>&1 && echo "gate $cand: PASS" \
      || echo "gate $cand: exit $?"
  done
  ls -la "$OUT"
}

stage=${1:?stage}; shift
setup
case $stage in
  setup) ;;
  build) build; wait_builds "${1:-0}" ;;
  wait) wait_builds "$@" ;;
  measure) measure "$@" ;;
  report) report ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
