#!/bin/sh
# make demo: promptd on its embedded defaults (in-process Kafka mock cluster), fed a burst
# of wind-farm and data-centre alarms by kcat, an independent Kafka client. Shows the
# decisions and the dead letters, then stops promptd cleanly. Leaves no process behind.
set -eu

promptd=${1:-build/promptd}
n=${DEMO_PROMPTS:-2000}
dir=$(mktemp -d "${TMPDIR:-/tmp}/promptd-demo.XXXXXX")
pid=""

cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "starting promptd on its embedded defaults"
"$promptd" --set kafka.embedded.bootstrap_file="$dir/bootstrap" 2>"$dir/promptd.log" &
pid=$!
for _ in $(seq 100); do [ -s "$dir/bootstrap" ] && break; sleep 0.1; done
[ -s "$dir/bootstrap" ] || { cat "$dir/promptd.log"; echo "promptd did not start"; exit 1; }
brokers=$(cat "$dir/bootstrap")
sed 's/^/  promptd| /' "$dir/promptd.log"

say "producing $n alarm prompts (and 3 malformed ones) with kcat -b $brokers"
awk -v n="$n" 'BEGIN {
    srand(7)
    split("WTG-%02d gearbox bearing temperature %dC above limit|" \
          "WTG-%02d pitch motor overcurrent %dA on blade B|" \
          "CRAC-%d return air temperature %d.5C high in hall 2|" \
          "UPS-%d on battery, %d%% charge remaining|" \
          "风机%d号 齿轮箱轴承温度 %d°C 超限|" \
          "PDU-%d breaker %d tripped, rack B12 down", t, "|")
    for (i = 0; i < n; i++) {
        text = sprintf(t[1 + i % 6], 1 + int(rand() * 40), 60 + int(rand() * 40))
        printf "alarm-%05d\t{\"id\":\"alarm-%05d\",\"text\":\"%s\",\"session\":\"site-%d\"}\n",
            i, i, text, i % 7
    }
    print "broken-1\t{\"id\":\"broken-1\",\"text\":\"unterminated"
    print "broken-2\t{\"text\":\"an alarm without an id\"}"
    print "broken-3\t{\"id\":\"broken-3\",\"body\":\"text is missing\"}"
}' >"$dir/prompts.jsonl"
kcat -P -b "$brokers" -t promptd.prompts -K "$(printf '\t')" -l "$dir/prompts.jsonl"

say "decisions (promptd.decisions), the first 5 of $n"
timeout 60 kcat -C -b "$brokers" -t promptd.decisions -o beginning -c "$n" -q \
    >"$dir/decisions.jsonl" || true
head -5 "$dir/decisions.jsonl" | sed 's/^/  /'
echo "  ... $(wc -l <"$dir/decisions.jsonl") decisions in all"

say "dead letters (promptd.dead-letters): each names its reason and its source"
timeout 30 kcat -C -b "$brokers" -t promptd.dead-letters -o beginning -c 3 -q | sed 's/^/  /'

say "stopping promptd (SIGTERM drains, commits and exits 0)"
kill -TERM "$pid"
wait "$pid" && status=0 || status=$?
pid=""
sed 's/^/  promptd| /' "$dir/promptd.log" | tail -3
echo "  exit status $status"

cat <<'MSG'

What next
  * Point promptd at your own Kafka: write a config file (start from conf/promptd.conf)
    with "kafka.brokers host1:9092,host2:9092" and run: build/promptd --config FILE
  * Validate a configuration: build/promptd --check --config FILE
  * Every key and its default: build/promptd --help-config
MSG
