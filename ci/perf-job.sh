#!/usr/bin/env bash
# One scheduled measurement on this runner, as the GitHub Actions jobs run it (and as tests/test_workflow.py
# runs it on Linux CPU): doctor → build → run → push → gate → dashboard. The gate's exit code is the job's.
#
#   ci/perf-job.sh [STAGE ...]     stages: doctor build run push gate dashboard (default: all, in that order)
#                                  and, on request, metal-check (predict each build's Metal load before it runs)
#                                  and metal-verify (the prediction against this machine's real load status)
#
# The workflow calls one stage per step, so each shows on its own in the Actions UI; what one stage leaves
# for the next lives in the databases and in $PERFGATE_OUT.
#
# Settings (environment):
#   PERFGATE_CONFIG       models.yaml of the job                                  (default models.yaml)
#   PERFGATE_BASELINE     build name the candidate is judged against              (default baseline)
#   PERFGATE_CANDIDATE    build name judged                                       (default candidate)
#   PERFGATE_BASELINE_REF, PERFGATE_CANDIDATE_REF
#                         git refs for those builds' `source.ref` (workflow_dispatch, release tags, PRs)
#   PERFGATE_LOCAL_DB     this runner's own SQLite store, where runs land first   (default ~/.cache/perfgate/runner.sqlite)
#   PERFGATE_CENTRAL_DB   the shared PostgreSQL URL (a secret): runs are pushed there, the dashboard reads it
#   PERFGATE_OUT          artifacts: doctor.json, gate.md, junit.xml, site/       (default perfgate-out)
#   PERFGATE_DOCTOR       enforce (an unfit machine fails the job) | warn | skip  (default enforce)
#   PERFGATE_BUILD        auto (`bench build` for builds with a source) | skip    (default auto)
#   PERFGATE_RUN_ARGS     extra `bench run` arguments                             (default --interleave)
#   PERFGATE_WORKDIR      folder to measure from (seed-metal: one without ggml-common.h)
#   PERFGATE_EXPECT_GATE  pass | fail: a job that must reproduce a regression (seed-metal) expects exit 1
#   BENCH                 the perfgate command                                    (default .venv/bin/bench)
set -euo pipefail

BENCH=$(realpath "${BENCH:-.venv/bin/bench}")
PYTHON=$(dirname "$BENCH")/python
CONFIG=$(realpath "${PERFGATE_CONFIG:-models.yaml}")
BASELINE=${PERFGATE_BASELINE:-baseline}
CANDIDATE=${PERFGATE_CANDIDATE:-candidate}
LOCAL_DB=${PERFGATE_LOCAL_DB:-$HOME/.cache/perfgate/runner.sqlite}
CENTRAL_DB=${PERFGATE_CENTRAL_DB:-}
OUT=${PERFGATE_OUT:-perfgate-out}
DOCTOR=${PERFGATE_DOCTOR:-enforce}
BUILD=${PERFGATE_BUILD:-auto}
read -r -a RUN_ARGS <<<"${PERFGATE_RUN_ARGS---interleave}"
WORKDIR=${PERFGATE_WORKDIR:-}
EXPECT=${PERFGATE_EXPECT_GATE:-pass}

mkdir -p "$OUT" "$(dirname "$LOCAL_DB")"
OUT=$(realpath "$OUT")
LOCAL_DB=$(realpath "$LOCAL_DB")
log() { printf '== perfgate job: %s\n' "$*"; }
warn() { printf '::warning::%s\n' "$*"; }

# the dashboard reads the central database, unless the last push could not reach it
read_db() {
  if [[ -n "$CENTRAL_DB" && ! -e "$OUT/push-failed" ]]; then printf '%s' "$CENTRAL_DB"; else printf '%s' "$LOCAL_DB"; fi
}

# the refs to compare replace the two builds' `source.ref`; the copy sits beside the config (same base folder)
if [[ -n "${PERFGATE_BASELINE_REF:-}${PERFGATE_CANDIDATE_REF:-}" ]]; then
  derived="$(dirname "$CONFIG")/.perfgate-job-$(basename "$CONFIG")"
  "$PYTHON" - "$CONFIG" "$derived" "$BASELINE=${PERFGATE_BASELINE_REF:-}" "$CANDIDATE=${PERFGATE_CANDIDATE_REF:-}" <<'EOF'
import sys, yaml
src, dst, *pairs = sys.argv[1:]
doc = yaml.safe_load(open(src, encoding="utf-8"))
refs = dict(p.split("=", 1) for p in pairs)
for build in doc.get("builds", []):
    ref = refs.get(build.get("name"))
    if ref:
        if "git" not in (build.get("source") or {}):
            sys.exit(f"error: {src}: build {build['name']!r} has no git source to take ref {ref!r}")
        build["source"]["ref"] = ref
open(dst, "w", encoding="utf-8").write(yaml.safe_dump(doc, sort_keys=False))
EOF
  CONFIG=$derived
fi

stage_doctor() {
  [[ "$DOCTOR" == skip ]] && return 0
  local fit=0 reasons
  "$BENCH" doctor --config "$CONFIG" --db "$(read_db)" --format json >"$OUT/doctor.json" || fit=$?
  [[ $fit -eq 0 ]] && return 0
  [[ $fit -ne 1 ]] && return "$fit"
  reasons=$("$PYTHON" -c 'import json,sys; print("; ".join(json.load(open(sys.argv[1]))["reasons"]))' "$OUT/doctor.json")
  if [[ "$DOCTOR" == enforce ]]; then
    printf 'error: this runner is not fit to measure: %s\n' "$reasons" >&2
    return 2
  fi
  warn "runner not fit to measure (measuring anyway): $reasons"
}

stage_build() {
  # `bench build` builds every build of the config that has a `source`; prebuilt ones need nothing
  if [[ "$BUILD" == auto ]] && "$BENCH" build --help >/dev/null 2>&1; then
    "$BENCH" build --config "$CONFIG"
  fi
}

stage_metal_check() {
  # the prediction of a Mac's load, before the Mac loads anything: exit 1 is a predicted failure (a job
  # that reproduces one expects it), exit 2 a check that could not run
  local rc=0
  "$BENCH" metal-check --config "$CONFIG" | tee "$OUT/metal-check.txt" || rc=${PIPESTATUS[0]}
  if [[ $rc -ge 2 ]]; then
    printf 'error: bench metal-check could not predict (exit %s)\n' "$rc" >&2
    return "$rc"
  fi
}

stage_metal_verify() {
  # fails when a real load contradicts its prediction: a wrong prediction is a perfgate bug to fix
  "$BENCH" metal-check --config "$CONFIG" --verify --db "$LOCAL_DB" | tee "$OUT/metal-verify.txt"
  return "${PIPESTATUS[0]}"
}

stage_run() {
  (
    if [[ -n "$WORKDIR" ]]; then cd "$WORKDIR"; fi
    "$BENCH" run --config "$CONFIG" --db "$LOCAL_DB" --wait --quiet "${RUN_ARGS[@]}"
  )
}

stage_push() {
  [[ -z "$CENTRAL_DB" ]] && return 0
  rm -f "$OUT/push-failed"
  # an unreachable central database fails nothing: the runs stay in $LOCAL_DB and the next job pushes them
  if ! "$BENCH" push --to "$CENTRAL_DB" --db "$LOCAL_DB"; then
    warn "push to the central database failed; this runner's runs stay local until the next push"
    touch "$OUT/push-failed"
  fi
}

stage_gate() {
  local gate=0
  "$BENCH" gate --baseline "$BASELINE" --candidate "$CANDIDATE" --db "$LOCAL_DB" --config "$CONFIG" \
    --junit "$OUT/junit.xml" --summary "$OUT/gate.md" >/dev/null || gate=$?
  if [[ $gate -eq 2 ]]; then
    printf 'error: bench gate could not judge (exit 2)\n' >&2
    return 2
  fi
  if [[ "$EXPECT" == fail ]]; then
    if [[ $gate -eq 1 ]]; then
      log "the gate failed, as this job expects"
      return 0
    fi
    printf 'error: the gate was expected to fail and exited %s\n' "$gate" >&2
    return 1
  fi
  return "$gate"
}

stage_dashboard() {
  "$BENCH" dashboard --db "$(read_db)" --out "$OUT/site" --config "$CONFIG"
}

stages=("$@")
[[ ${#stages[@]} -eq 0 ]] && stages=(doctor build run push gate dashboard)
verdict=0
for stage in "${stages[@]}"; do
  case "$stage" in
    doctor | build | run | push | dashboard | metal-check | metal-verify)
      log "$stage"
      "stage_${stage//-/_}"
      ;;
    gate)
      # the gate's verdict is the job's, but the dashboard after it is still built
      log "gate $CANDIDATE vs $BASELINE"
      stage_gate || verdict=$?
      ;;
    *)
      printf 'error: unknown stage %q (doctor build run push gate dashboard metal-check metal-verify)\n' "$stage" >&2
      exit 2
      ;;
  esac
done
exit "$verdict"
