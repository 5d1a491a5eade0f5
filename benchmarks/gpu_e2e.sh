#!/usr/bin/env bash
# The product loop on a GPU, through perfgate's own commands only: `bench build` of two consecutive llama.cpp
# releases (a git repository with two tags, CUDA cmake_args) and of the same release for sm_80 only, then per
# model size `bench gate --measure` from an empty store to a verdict (timed), `bench run --interleave` of the
# sm_80 build and of the llama-cpp-python worker on the release's own libllama (`library_of`), the gates, and
# at the end `bench dashboard`. Each stage fits one 10-minute call of the `device` tool; state lives in $E2E.
#
#   benchmarks/gpu_e2e.sh build [WAIT_S [SIZE…]]  # start every build (in the background: it outlives the call),
#                                          # synthesize SIZE… meanwhile, wait
#   benchmarks/gpu_e2e.sh wait [WAIT_S]    # wait for the builds; print each build's record
#   benchmarks/gpu_e2e.sh size 7B [13B…]   # per size: synth, gate --measure, run, gates, delete the model
#   benchmarks/gpu_e2e.sh kobold 7B        # KoboldCPP v1.60.1 vs v1.61 (--usecublas) built from their tags, gated
#   benchmarks/gpu_e2e.sh report           # results, builds, verdicts, timings and the dashboard into $OUT
#   benchmarks/gpu_e2e.sh chain STEP…      # the steps in the background (setsid: they outlive the call), one after
#                                          # another, e.g. `chain build:70B size:70B size:34B report kobold:7B report`
#   benchmarks/gpu_e2e.sh follow [WAIT_S]  # wait for the chain (or WAIT_S), print its log, bring back what it wrote
#
# A device call lasts 10 minutes and the machine goes back 30 s after a call ends: `chain` keeps the GPU busy
# between calls, and each `follow` call holds the machine while it works. E2E_SM80=0 leaves out the sm_80 build.
# Carried (git-ignored) inputs, made by benchmarks/prepare_gpu_carry.sh: .gpu/llama.cpp.git (tags v0.3.35,
# v0.3.36), .gpu/whl (perfgate's dependencies for the GPU image's Python), .gpu/py/llama_cpp (the bindings);
# optionally .gpu/koboldcpp.git (tags v1.60.1, v1.61). E2E_BACKEND=cpu rehearses the same stages on a machine
# without a GPU (CPU cmake_args, no sm_80 build, small shapes).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
E2E=${E2E:-/root/perfgate-e2e}
OUT=${OUT:-$E2E/out}
BACKEND=${E2E_BACKEND:-cuda}
SM80=${E2E_SM80:-1}
[ "$BACKEND" = cuda ] || SM80=0
LLAMA_GIT=${E2E_LLAMA_GIT:-$REPO/.gpu/llama.cpp.git}
KOBOLD_GIT=${E2E_KOBOLD_GIT:-$REPO/.gpu/koboldcpp.git}
BASE=${E2E_BASE:-v0.3.35}
CAND=${E2E_CAND:-v0.3.36}
mkdir -p "$E2E/models" "$OUT"
export PYTHONPATH=/tmp/site:$REPO/.gpu/py:$REPO${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export PERFGATE_BUILD_CACHE=$E2E/builds PERFGATE_DB=$E2E/e2e.sqlite
PY=${E2E_PYTHON:-$(command -v python3)}
bench() { "$PY" -m bench "$@"; }
stamp() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$E2E/timings.tsv"; echo "[$1] $2: $3"; }

setup() {
  # a bare image may lack git (git sources) or make (KoboldCPP): Debian's packages travel in .gpu/debs
  for tool in git make; do
    if ! command -v $tool >/dev/null && ls .gpu/debs/${tool}_*.deb >/dev/null 2>&1; then
      dpkg -x .gpu/debs/${tool}_*.deb /tmp/tools
      echo "$tool: unpacked from .gpu/debs"
    fi
  done
  [ -x /usr/local/cuda/bin/nvcc ] && export PATH=$PATH:/usr/local/cuda/bin  # KoboldCPP's Makefile calls nvcc
  if [ -d /tmp/tools/usr/bin ]; then export PATH=$PATH:/tmp/tools/usr/bin GIT_EXEC_PATH=/tmp/tools/usr/lib/git-core; fi
  if [ -d .gpu/whl ] && ! "$PY" -c "import sqlalchemy, re2" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
  fi
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  df -h "$E2E" | tail -1
  return 0
}

config() {  # the suite: every build, models given per stage
  local cmake common
  if [ "$BACKEND" = cuda ]; then
    common="-DGGML_CUDA=ON, -DGGML_CUDA_FA=OFF, -DGGML_NATIVE=OFF, -DLLAMA_CURL=OFF, -DLLAMA_BUILD_TESTS=OFF,
      -DLLAMA_BUILD_EXAMPLES=OFF, -DLLAMA_BUILD_SERVER=OFF"
    cmake="[$common, -DCMAKE_CUDA_ARCHITECTURES=90]"
  else
    cmake="[-DGGML_NATIVE=OFF, -DLLAMA_CURL=OFF, -DLLAMA_BUILD_TESTS=OFF, -DLLAMA_BUILD_EXAMPLES=OFF,
      -DLLAMA_BUILD_SERVER=OFF]"
  fi
  cat <<EOF
builds:
  - {name: lcpp-${BASE#v}, engine: llama-bench, source: {git: $LLAMA_GIT, ref: $BASE}, cmake_args: $cmake}
  - {name: lcpp-${CAND#v}, engine: llama-bench, source: {git: $LLAMA_GIT, ref: $CAND}, cmake_args: $cmake}
  - {name: lcp-${CAND#v}, library_of: lcpp-${CAND#v}}
EOF
  if [ "$SM80" = 1 ]; then
    echo "  - {name: lcpp-${CAND#v}-sm80, engine: llama-bench, source: {git: $LLAMA_GIT, ref: $CAND},
      cmake_args: [$common, -DCMAKE_CUDA_ARCHITECTURES=80-real]}"
  fi
  if [ -d "$KOBOLD_GIT" ]; then
    local vars="{LLAMA_CUBLAS: 1}" target=koboldcpp_cublas args="[--usecublas]"
    [ "$BACKEND" = cuda ] || { vars="{LLAMA_PORTABLE: 1}"; target=koboldcpp_default; args="[]"; }
    for v in v1.60.1 v1.61; do
      echo "  - {name: kcpp-${v#v}, engine: koboldcpp, source: {git: $KOBOLD_GIT, ref: $v}, system: make,"
      echo "     make_vars: $vars, targets: [$target], args: $args}"
    done
  fi
  echo "suite: {n_prompt: 512, n_gen: 128, repetitions: ${E2E_REPS:-5}, warmup: 1, n_gpu_layers: all}"
}

sized() {  # config path for one model size and some builds: sized SIZE BUILD...
  local size=$1 cfg="$E2E/$1-$2.yaml"; shift
  {
    echo "models:"
    echo "  - {name: $size-Q4_0, path: $E2E/models/$size-Q4_0.gguf, timeout_s: 900}"
    config | "$PY" -c '
import sys, yaml
doc = yaml.safe_load(sys.stdin.read())
keep = set(sys.argv[1:])
doc["builds"] = [b for b in doc["builds"] if b["name"] in keep or b["name"] in
                 {x.get("library_of") for x in doc["builds"] if x["name"] in keep}]
print(yaml.safe_dump({k: v for k, v in doc.items()}, sort_keys=False))' "$@"
  } >"$cfg"
  echo "$cfg"
}

build() {
  { echo "models: [{name: none, synth: {shape: tiny}}]"; config; } >"$E2E/all.yaml"
  local llama="lcpp-${CAND#v} lcpp-${BASE#v}"
  [ "$SM80" = 1 ] && llama="$llama lcpp-${CAND#v}-sm80"
  # llama.cpp and KoboldCPP build side by side; each `bench build` builds its list in order, most needed first
  setsid nohup bash -c "t0=\$SECONDS; $PY -m bench build --config $E2E/all.yaml $llama; echo \"exit \$? \$((SECONDS-t0)) s\" >$E2E/build-llama.done" \
    >"$E2E/build-llama.log" 2>&1 </dev/null &
  if [ -d "$KOBOLD_GIT" ]; then
    setsid nohup bash -c "t0=\$SECONDS; $PY -m bench build --config $E2E/all.yaml kcpp-1.61 kcpp-1.60.1; echo \"exit \$? \$((SECONDS-t0)) s\" >$E2E/build-kobold.done" \
      >"$E2E/build-kobold.log" 2>&1 </dev/null &
  fi
  echo "builds started"
}

wait_builds() {
  local limit=${1:-0} start=$SECONDS want=("$E2E/build-llama.done")
  [ -d "$KOBOLD_GIT" ] && want+=("$E2E/build-kobold.done")
  while [ $((SECONDS - start)) -lt "$limit" ]; do
    local missing=0
    for f in "${want[@]}"; do [ -f "$f" ] || missing=1; done
    [ $missing = 0 ] && break
    sleep 5
  done
  for f in "${want[@]}"; do
    printf '%s: %s\n' "$(basename "$f" .done)" "$(cat "$f" 2>/dev/null || echo running)"
    tail -c 600 "${f%.done}.log" 2>/dev/null | tr '\r' '\n' | grep -v '^\s*$' | tail -4
  done
  bench builds --config "$E2E/all.yaml" --format json >"$OUT/builds.json" 2>/dev/null || true
  "$PY" - "$OUT/builds.json" <<'PYEOF'
import json, sys
for b in json.load(open(sys.argv[1])):
    fail = b.get("failure") or {}
    print(f"  {b['name']}: {'ok' if b['ok'] else fail.get('kind')} {b['build_s']:.0f} s key {b['key']} {fail.get('line') or ''}"[:300])
PYEOF
}

synth() {  # synth SIZE...: models the next stages measure (a model already written is kept)
  for size in "$@"; do
    [ -f "$E2E/models/$size-Q4_0.gguf" ] || synth_one "$size"
  done
}

synth_one() {
  local size=$1 t0=$SECONDS
  bench synth --shape "$size" --quant Q4_0 --out "$E2E/models/$size-Q4_0.gguf" >/dev/null
  stamp "$size" synth_s $((SECONDS - t0))
}

timed() {  # timed SIZE WHAT command...: the command's wall seconds and exit code into timings.tsv
  local size=$1 what=$2 t0=$SECONDS rc=0; shift 2
  "$@" || rc=$?
  stamp "$size" "${what}_s" $((SECONDS - t0))
  stamp "$size" "${what}_exit" $rc
}

size() {
  local base="lcpp-${BASE#v}" cand="lcpp-${CAND#v}"
  for size in "$@"; do
    synth "$size"
    local pair others
    pair=$(sized "$size" "$base" "$cand")
    # from no samples to a verdict: the gate measures a first round, then adds ABBA rounds until sure
    timed "$size" verdict bench gate --baseline "$base" --candidate "$cand" --config "$pair" --measure \
      --budget-s "${E2E_BUDGET_S:-600}" --json "$E2E/gate-$size.json" --summary "$E2E/gate-$size.md" >/dev/null
    head -12 "$E2E/gate-$size.md"
    others=("$cand")
    [ "${E2E_WORKER:-1}" = 1 ] && others+=("lcp-${CAND#v}")
    [ "$SM80" = 1 ] && others+=("$cand-sm80")
    local rest
    rest=$(sized "$size" "${others[@]}")
    timed "$size" run bench run --config "$rest" --interleave --rounds "${E2E_ROUNDS:-2}" --quiet
    if [ "$SM80" = 1 ]; then
      timed "$size" sm80_gate bench gate --baseline "$cand" --candidate "$cand-sm80" --config "$rest" \
        --json "$E2E/gate-sm80-$size.json" --summary "$E2E/gate-sm80-$size.md" >/dev/null
      head -8 "$E2E/gate-sm80-$size.md"
    fi
    [ "${E2E_WORKER:-1}" = 1 ] && fidelity "$size"
    rm -f "$E2E/models/$size-Q4_0.gguf"
  done
  pack
}

pack() {  # $OUT brings back few files: the store, and every verdict and timing in one archive
  cp "$E2E/e2e.sqlite" "$OUT/"
  tar -czf "$OUT/verdicts.tar.gz" -C "$E2E" $(cd "$E2E" && ls timings.tsv fidelity.txt gate-*.json gate-*.md 2>/dev/null)
}

fidelity() {  # the worker on the release's own libllama beside llama-bench of the same tree
  local size=$1
  bench compare --baseline "lcpp-${CAND#v}" --candidate "lcp-${CAND#v}" --format json >"$E2E/fidelity.json" || return 0
  "$PY" - "$E2E/fidelity.json" "$size" <<'PYEOF' | tee -a "$E2E/fidelity.txt"
import json, sys
doc = json.load(open(sys.argv[1]))
for r in doc["rows"]:
    if r["model"] == sys.argv[2] + "-Q4_0" and r["metric"] in ("pp_ts", "tg_ts"):
        if r.get("ratio") is None:  # a side that did not load: its status is in the store, not a number
            print(f"fidelity {r['model']} {r['metric']}: not measured on both sides ({r.get('note') or r})")
            continue
        print(f"fidelity {r['model']} {r['metric']}: worker {r['candidate']:.1f} / llama-bench {r['baseline']:.1f} t/s"
              f" = {r['ratio']:.4f}")
PYEOF
}

kobold() {
  for size in "$@"; do
    synth "$size"
    local cfg
    cfg=$(sized "$size" kcpp-1.60.1 kcpp-1.61)
    timed "kcpp-$size" verdict bench gate --baseline kcpp-1.60.1 --candidate kcpp-1.61 --config "$cfg" --measure \
      --budget-s "${E2E_BUDGET_S:-600}" --json "$E2E/gate-kcpp-$size.json" --summary "$E2E/gate-kcpp-$size.md" >/dev/null
    head -12 "$E2E/gate-kcpp-$size.md"
    rm -f "$E2E/models/$size-Q4_0.gguf"
  done
  pack
}

report() {
  local base="lcpp-${BASE#v}" cand="lcpp-${CAND#v}"
  bench results --all --format json >"$OUT/results.json"
  bench gate --baseline "$base" --candidate "$cand" --json "$OUT/gate.json" --summary "$OUT/gate.md" >/dev/null \
    && echo "gate $cand vs $base: pass" || echo "gate $cand vs $base: exit $?"
  bench builds --config "$E2E/all.yaml" --format json >"$OUT/builds.json"
  cp "$E2E/timings.tsv" "$E2E/e2e.sqlite" "$OUT/"
  printf 'dashboard:\n  baseline: %s\n' "$base" >"$E2E/site.yaml"
  config >>"$E2E/site.yaml"
  sed -i "1i models: [{name: none, synth: {shape: tiny}}]" "$E2E/site.yaml"
  bench dashboard --config "$E2E/site.yaml" --out "$E2E/site" | tail -2
  tar -czf "$OUT/site.tar.gz" -C "$E2E" site
  tar -czf "$OUT/logs.tar.gz" -C "$E2E" $(cd "$E2E" && ls ./*.log ./*.yaml 2>/dev/null)
  ls -la "$OUT"
}

chain() {  # chain STEP...: STEP is stage[:arg,arg] or VAR=value (for the steps after it); detached, logged
  rm -f "$E2E/chain.done"
  E2E_OUT="$E2E/out" setsid nohup bash -c '
    for step in "${@:1}"; do
      case $step in *=*) export "${step?}"; echo "=== $step"; continue ;; esac
      stage=${step%%:*}; args=${step#"$stage"}; args=${args#:}
      echo "=== $stage ${args//,/ } (at $(date +%T))"
      OUT=$E2E_OUT bash "$0" "$stage" ${args//,/ } || echo "=== $stage: exit $?"
    done
    echo "=== chain done (at $(date +%T))"; touch "$E2E_OUT/../chain.done"
  ' "$REPO/benchmarks/gpu_e2e.sh" "$@" >>"$E2E/chain.log" 2>&1 </dev/null &
  echo "chain started: $*"
}

follow() {  # wait for the chain, up to WAIT_S; print its log; copy what it wrote into this call's $OUT
  local limit=${1:-0} start=$SECONDS
  while [ ! -f "$E2E/chain.done" ] && [ $((SECONDS - start)) -lt "$limit" ]; do sleep 5; done
  tr '\r' '\n' <"$E2E/chain.log" | grep -v '━' | tail -n "${E2E_TAIL:-80}"
  [ -f "$E2E/chain.done" ] && echo "chain: done" || echo "chain: running"
  if [ "$OUT" != "$E2E/out" ] && [ -d "$E2E/out" ]; then cp -r "$E2E/out/." "$OUT/"; fi
  cp "$E2E/chain.log" "$OUT/" 2>/dev/null || true
}

stage=${1:?stage}
shift
[ "$stage" = follow ] || setup
case $stage in
  chain) chain "$@" ;;
  follow) follow "${1:-0}" ;;
  setup) ;;
  build) build; synth "${@:2}"; wait_builds "${1:-0}" ;;
  wait) wait_builds "${1:-0}" ;;
  size) size "$@" ;;
  kobold) kobold "$@" ;;
  report) report ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
