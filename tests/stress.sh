#!/usr/bin/env bash
# tests/stress.sh N [PYTEST ARGS...]: the whole suite (or what the pytest arguments select)
# N times (default 1) while CPU hogs occupy every core, reporting every failure: the
# failed test ids of each run, then a summary. Exits 1 when any run failed. A test that
# only passes on an idle machine shows up here.
#
#   HOGS=k           busy loops to run beside the suite (default: one per core, nproc)
#   STRESS_LOGS=dir  where each run's full output is kept (default: a new temporary dir)
#   PY=python        the interpreter (default: .venv/bin/python, else python3)
#
# The hogs are `yes >/dev/null` processes, killed on exit, Ctrl-C or TERM (with the suite
# then running).
set -uo pipefail
cd "$(dirname "$0")/.."

runs=${1:-1}
if ! [[ $runs =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: tests/stress.sh [N [PYTEST ARGS...]]   (N >= 1 runs of the suite)" >&2
    exit 2
fi
shift $(($# > 0 ? 1 : 0))
hogs=${HOGS:-$(nproc)}
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
logs=${STRESS_LOGS:-$(mktemp -d -t edgeci-stress.XXXXXX)}
mkdir -p "$logs"

pids=()
suite=""
stop_hogs() {
    if [[ -n $suite ]]; then
        kill "$suite" 2>/dev/null  # an interrupted run stops its suite too
        wait "$suite" 2>/dev/null
        suite=""
    fi
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null
    done
    pids=()
}
trap stop_hogs EXIT
trap 'stop_hogs; exit 130' INT
trap 'stop_hogs; exit 143' TERM

for ((i = 0; i < hogs; i++)); do
    yes >/dev/null &
    pids+=($!)
done
echo "stress: $runs run(s) of the suite beside $hogs CPU hog(s); logs in $logs"

failed_runs=0
declare -A times_failed=()
for ((run = 1; run <= runs; run++)); do
    log="$logs/run-$run.log"
    start=$SECONDS
    "$PY" -m pytest -q -p no:cacheprovider -rfE "$@" >"$log" 2>&1 &
    suite=$!
    wait "$suite"
    rc=$?
    suite=""
    took=$((SECONDS - start))
    summary=$(tail -n 1 "$log")
    # pytest's short summary lines: "FAILED tests/x.py::test - why", "ERROR tests/..."
    # (not the captured log lines that start with a level name: "ERROR    asyncio:...")
    mapfile -t ids < <(grep -E '^(FAILED|ERROR) [^: ]+\.py(::| |$)' "$log" | awk '{print $1, $2}' | sort -u)
    if ((rc == 0)); then
        echo "run $run/$runs: passed in ${took} s ($summary)"
    else
        failed_runs=$((failed_runs + 1))
        echo "run $run/$runs: FAILED (exit $rc) in ${took} s ($summary)"
        if ((${#ids[@]} == 0)); then
            echo "    no test ids in the output (a crash or an interrupt?): see $log"
        fi
        for id in "${ids[@]}"; do
            echo "    $id"
            times_failed[$id]=$((${times_failed[$id]:-0} + 1))
        done
    fi
done

echo
echo "stress summary: $((runs - failed_runs))/$runs run(s) passed beside $hogs CPU hog(s)"
if ((${#times_failed[@]})); then
    echo "failed tests (times failed out of $runs):"
    for id in "${!times_failed[@]}"; do
        echo "    ${times_failed[$id]}x $id"
    done | sort -rn -k1
fi
((failed_runs == 0))
