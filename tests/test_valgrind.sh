#!/bin/sh
# promptd under valgrind (memcheck) through a whole run: the embedded broker, the alarm
# scenario's prompts and rewards from `promptctl simulate` (so the encoder, the Lua pack,
# the policy, the journal and the learner with its checkpoints all run), then SIGTERM.
# Passes when every prompt is decided and promptd exits 0: valgrind turns any memory
# error or definite leak into exit status 99 (its report is printed then).
#
#   tests/test_valgrind.sh [BUILD]
set -u

build=${1:-build}
# Enough for the learner to update and checkpoint (batches of 32) at least once; under
# valgrind each prompt costs about a quarter of a second.
prompts=100
dir=$(mktemp -d "${TMPDIR:-/tmp}/promptd-valgrind.XXXXXX")
pid=""
cleanup() {
    [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
    [ -n "${PROMPTD_KEEP_TEST_FILES:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT INT TERM
fail() {
    echo "FAIL $*"
    sed 's/^/  promptd| /' "$dir/promptd.log" | tail -20
    [ -s "$dir/valgrind.log" ] && sed 's/^/  valgrind| /' "$dir/valgrind.log" | head -60
    exit 1
}

OPENBLAS_NUM_THREADS=1 valgrind --quiet --leak-check=full --errors-for-leak-kinds=definite \
    --show-leak-kinds=definite --error-exitcode=99 --log-file="$dir/valgrind.log" \
    "$build/promptd" --set kafka.embedded.bootstrap_file="$dir/bootstrap" \
    --set learner.checkpoint_dir="$dir/state" --set metrics.listen=127.0.0.1:0 \
    --set reward.window=2s --set learner.batch_size=32 --set learner.checkpoint_every=0 \
    --set log.level=notice 2>"$dir/promptd.log" &
pid=$!

waited=0
until [ -s "$dir/bootstrap" ]; do
    kill -0 "$pid" 2>/dev/null || fail "promptd exited before serving"
    [ $waited -ge 120 ] && fail "promptd wrote no bootstrap file in 60 s"
    sleep 0.5
    waited=$((waited + 1))
done

"$build/promptctl" simulate --bootstrap-file "$dir/bootstrap" --scenario alarm \
    --prompts $prompts --seed 9 --stall 120 --json "$dir/summary.json" >"$dir/simulate.txt" 2>&1 ||
    fail "promptctl simulate failed: $(tail -3 "$dir/simulate.txt")"
grep -q "\"decisions\": $prompts," "$dir/summary.json" ||
    fail "not every prompt was decided: $(cat "$dir/summary.json")"
# The learner trains behind the stream, once the rewards' window closes: its first
# checkpoint is awaited.
waited=0
until ls "$dir/state"/*.ckpt >/dev/null 2>&1; do
    [ $waited -ge 120 ] && fail "the learner wrote no checkpoint in 60 s"
    sleep 0.5
    waited=$((waited + 1))
done

kill -TERM "$pid"
wait "$pid"
rc=$?
pid=""
[ $rc -eq 0 ] || fail "promptd under valgrind exited $rc (99: memory errors or definite leaks)"
echo "ok   promptd under valgrind: $prompts prompts decided and rewarded, a checkpoint written, no memory error, no definite leak"
