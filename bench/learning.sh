#!/bin/sh
# Learning quality through the whole daemon: for 8, 16 and 32 templates, promptd on its
# embedded broker learns the bandit scenario (lua/scenarios/bandit.lua: as many kinds of
# situation as templates, response patterns split by groups of equipment, said by the
# alarm generator, each with one best template, noisy rewards) from 10,000 reward events sent by `promptctl simulate`. Prints the mean
# quality of the last 1,000 choices as a fraction of the oracle's (target 0.90), against
# uniform random choice; writes the regret curves (CSV: decisions, policy version,
# quality, oracle, uniform, cumulative regret) and the learning curves (SVG) to
# build/bench/. The numbers move by a few hundredths between runs: the learner's thread
# and the broker's timing make each run's batches differ.
#
#   bench/learning.sh [BUILD] [PROMPTS]
#
# LEARNING_SET="key=value ..." adds promptd settings, to see what they change.
set -eu

build=${1:-build}
prompts=${2:-10000}
out=$build/bench
mkdir -p "$out"
dir=$(mktemp -d "${TMPDIR:-/tmp}/promptd-learning.XXXXXX")
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM
extra=""
for kv in ${LEARNING_SET:-}; do extra="$extra --set $kv"; done

echo "learning: bandit scenario through promptd, $prompts reward events each (target >= 0.90)"
printf '  %-9s %-22s %-16s %-9s %s\n' templates "last 1000 / oracle" "uniform / oracle" versions seconds
for k in 8 16 32; do
    rm -rf "$dir/pack" "$dir/state" "$dir/bootstrap"
    mkdir -p "$dir/pack"
    "$build/promptctl" simulate --scenario bandit --param templates=$k --write-pack "$dir/pack" \
        >/dev/null
    OPENBLAS_NUM_THREADS=1 "$build/promptd" --set kafka.embedded.bootstrap_file="$dir/bootstrap" \
        --set policy.pack="$dir/pack" --set learner.checkpoint_dir="$dir/state" \
        --set metrics.listen= --set reward.window=5s --set log.level=warning $extra \
        2>"$dir/promptd-$k.log" &
    pid=$!
    "$build/promptctl" simulate --bootstrap-file "$dir/bootstrap" --scenario bandit \
        --param templates=$k --prompts "$prompts" --every 100 --seed $k \
        --csv "$out/learning_$k.csv" --svg "$out/learning_$k.svg" --json "$dir/summary.json" \
        >/dev/null
    kill -TERM "$pid" && wait "$pid" || true
    pid=""
    /usr/bin/env awk -v k=$k '
        /"fraction_of_oracle"/ { gsub(/[,"]/, ""); f = $2 }
        /"uniform_fraction"/   { gsub(/[,"]/, ""); u = $2 }
        /"policy_version"/     { gsub(/[,"]/, ""); v = $2 }
        /"seconds"/            { gsub(/[,"]/, ""); s = $2 }
        END { printf "  %-9s %-22.2f %-16.2f %-9s %.0f\n", k, f, u, v, s }' "$dir/summary.json"
done
echo "  regret and learning curves: $out/learning_{8,16,32}.{csv,svg}"
