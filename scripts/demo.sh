#!/bin/sh
# make demo: promptd learning, in about two minutes, on nothing but this machine.
#
# promptd starts on its embedded defaults (Kafka's mock cluster in-process; a private
# redis-server when one is installed, else the in-process cache), with the shipped alarm
# pack and model. `promptctl simulate` plays the alarm scenario against it through Kafka:
# wind-farm and data-centre alarms in, decisions out, operator feedback back as reward
# events. The live view shows the quality of promptd's choices climbing from uniform
# random towards the oracle. About a minute in, the demo edits the pack's reward
# function live and reloads it, as an operator would. At the end: a summary, the
# learning curve (demo-learning-curve.svg) and how to go on with a real Kafka and Redis.
# Everything it starts it stops; nothing is left running.
set -eu

build=${1:-build}
prompts=${DEMO_PROMPTS:-9000}
rate=${DEMO_RATE:-90}
edit_after=${DEMO_EDIT_AFTER:-60}
svg=${DEMO_SVG:-demo-learning-curve.svg}
dir=$(mktemp -d "${TMPDIR:-/tmp}/promptd-demo.XXXXXX")
pid="" redis_pid="" editor_pid=""

cleanup() {
    for p in $editor_pid $pid $redis_pid; do kill "$p" 2>/dev/null || true; done
    for p in $editor_pid $pid $redis_pid; do wait "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# A copy of the shipped pack, so that the live edit leaves the repository alone.
cp -r policies/alarm "$dir/pack"

redis_url=none
if command -v redis-server >/dev/null 2>&1; then
    # A unix socket in the scratch directory: no port to collide with, nothing reachable
    # from outside, gone with the directory.
    redis-server --port 0 --unixsocket "$dir/redis.sock" --save '' --appendonly no \
        --dir "$dir" --logfile "$dir/redis.log" &
    redis_pid=$!
    for _ in $(seq 50); do [ -S "$dir/redis.sock" ] && break; sleep 0.1; done
    [ -S "$dir/redis.sock" ] && redis_url="unix://$dir/redis.sock"
fi

say "starting promptd (embedded Kafka, cache: $([ "$redis_url" = none ] && echo in-process || echo "a private redis-server"))"
OPENBLAS_NUM_THREADS=1 "$build/promptd" \
    --set kafka.embedded.bootstrap_file="$dir/bootstrap" \
    --set policy.pack="$dir/pack" \
    --set redis.url="$redis_url" \
    --set learner.checkpoint_dir="$dir/state" \
    --set metrics.listen=127.0.0.1:0 \
    --set admin.socket="$dir/admin.sock" \
    --set reward.window=30s \
    --set policy.watch=no \
    2>"$dir/promptd.log" &
pid=$!
for _ in $(seq 150); do [ -s "$dir/bootstrap" ] && break; sleep 0.1; done
[ -s "$dir/bootstrap" ] || { cat "$dir/promptd.log"; echo "promptd did not start"; exit 1; }
sed 's/^<[0-9]>/  promptd| /' "$dir/promptd.log"
sleep 2

# The operator's edits, a minute in (promptd watches its pack and would reload on its
# own; the demo turns that off so that each edit's answer is the demo's to show): time to resolve should count for more (up to +1
# within the hour instead of +0.5). The first edit forgets the pack's self-test, which
# still expects the old numbers: promptd refuses it and the previous version keeps
# serving. The second updates the self-test too, and is taken. `promptctl reload` waits
# for each result, as `systemctl reload` does.
(
    sleep "$edit_after"
    pack="$dir/pack/init.lua"
    sed -i 's|r = r + 0.5 \* math.max(0, 1 - event.time_to_resolve_s / 3600)|r = r + 1.0 * math.max(0, 1 - event.time_to_resolve_s / 3600)|' "$pack"
    "$build/promptctl" reload --admin "$dir/admin.sock" >"$dir/reload1.txt" 2>&1 || true
    sleep 8
    sed -i 's|time_to_resolve_s = 0, rating = 5 }, {}) == 2)|time_to_resolve_s = 0, rating = 5 }, {}) == 2.5)|' "$pack"
    "$build/promptctl" reload --admin "$dir/admin.sock" >"$dir/reload2.txt" 2>&1 || true
) &
editor_pid=$!

live=""
[ -t 1 ] && live=--live
"$build/promptctl" simulate $live --bootstrap-file "$dir/bootstrap" --scenario alarm \
    --admin "$dir/admin.sock" \
    --prompts "$prompts" --rate "$rate" --every 1000 --svg "$svg" --json "$dir/summary.json"
wait "$editor_pid" 2>/dev/null || true
editor_pid=""

say "the live edits of the reward function"
echo "  1. reward changed, self-test not:  $(cat "$dir/reload1.txt" 2>/dev/null || echo '(not reached)')"
echo "  2. self-test updated as well:      $(cat "$dir/reload2.txt" 2>/dev/null || echo '(not reached)')"

say "promptd's own view: promptctl status (from its metrics, on the admin socket)"
"$build/promptctl" status --admin "$dir/admin.sock" | sed 's/^/  /' || true

say "stopping promptd (SIGTERM: drain, commit, final checkpoint)"
kill -TERM "$pid"
wait "$pid" && status=0 || status=$?
pid=""
grep -E 'stopped' "$dir/promptd.log" | sed 's/^<[0-9]>/  promptd| /' | tail -3
echo "  exit status $status"

cat <<MSG

The learning curve is in $(pwd)/$svg (open it in a browser).

What next
  * Your own Kafka and Redis: copy conf/promptd.conf, set
        kafka.brokers  broker1:9092,broker2:9092
        redis.url      redis://redis.example:6379/0
    then: build/promptd --check --config FILE && build/promptd --config FILE
  * Feed it: prompts as JSON on promptd.prompts ({"id", "text", "session"?, "attrs"?}),
    reward events on promptd.rewards ({"id", ...}); decisions come out on promptd.decisions.
  * Write your own pack: start from policies/alarm, check it with: build/promptctl check DIR
  * Install as a service: make install && systemctl enable --now promptd
MSG
