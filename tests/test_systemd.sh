#!/bin/bash
# Operations files, checked offline (PID 1 here is not systemd):
#  - the units pass `systemd-analyze verify` (executables, directives, man pages) and
#    `systemd-analyze security --offline=yes` rates each at most 1.0;
#  - every hardening item the rating still counts against a unit is explained in it;
#  - the units say what promptd needs (notify, watchdog, reload that reports, no restart
#    loop on a configuration error, state and configuration directories);
#  - sysusers.d and tmpfiles.d create the user and the directories with the right owners
#    and modes (in a scratch root);
#  - the man pages render without a groff warning;
#  - the Grafana dashboard and the alert rules are well-formed and use only documented
#    metrics.
#
# Usage: tests/test_systemd.sh [BUILD_DIR]  (default build; needs promptd and promptctl
# built there). Prints one line per check and "N passed, N failed"; exits 1 on a failure.
set -u

cd "$(dirname "$0")/.." || exit 1
build=$(cd "${1:-build}" 2>/dev/null && pwd) || { echo "no build directory ${1:-build}"; exit 1; }
scratch=$(mktemp -d "${TMPDIR:-/tmp}/promptd-systemd.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
passed=0 failed=0
max_exposure=1.0

ok() { passed=$((passed + 1)); echo "ok   $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
check() { # check DESCRIPTION COMMAND...: passes when the command succeeds
    local what=$1
    shift
    if "$@" >"$scratch/out" 2>&1; then ok "$what"; else fail "$what"; sed 's/^/     /' "$scratch/out"; fi
}

for tool in systemd-analyze systemd-sysusers systemd-tmpfiles groff man /usr/bin/python3; do
    command -v "$tool" >/dev/null || { fail "$tool is not installed (make deps)"; }
done
for bin in promptd promptctl; do
    [ -x "$build/$bin" ] || fail "$build/$bin is not built"
done

# The units name /usr/bin/promptd as a package installs it; `make install` rewrites the
# directory, and so does this test, to the binaries just built.
mkdir -p "$scratch/units" "$scratch/man/man1" "$scratch/man/man8"
for unit in systemd/promptd.service systemd/promptd@.service; do
    sed "s|/usr/bin/|$build/|g" "$unit" >"$scratch/units/$(basename "$unit")"
done
cp man/promptd.8 "$scratch/man/man8/"
cp man/promptctl.1 "$scratch/man/man1/"

# --- systemd-analyze verify: clean, including Documentation=man:... ---

verify() {
    local out
    out=$(cd "$scratch" && MANPATH="$scratch/man" systemd-analyze verify "$1" 2>&1) || {
        echo "$out"
        return 1
    }
    [ -z "$out" ] || { echo "$out"; return 1; }
}
for unit in promptd.service promptd@.service; do
    check "systemd-analyze verify $unit is clean" verify "$scratch/units/$unit"
done

# --- exposure <= 1.0, and every item still counted is explained ---

exposure() {
    systemd-analyze security --offline=yes "$1" 2>&1 | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p'
}
explained() { # every directive marked ✗ is named in a comment of the unit
    local unit=$1 missing=0 item
    while read -r item; do
        if ! grep -q "^#.*${item}" "$unit"; then
            echo "$(basename "$unit"): $item counts against the unit but no comment explains it"
            missing=1
        fi
    done < <(systemd-analyze security --offline=yes "$unit" 2>/dev/null |
        sed -n 's/^✗ \([A-Za-z]*=\).*/\1/p' | sort -u)
    return $missing
}
for unit in promptd.service promptd@.service; do
    score=$(exposure "$scratch/units/$unit")
    if [ -n "$score" ] && awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s <= m) }'; then
        ok "systemd-analyze security rates $unit $score (at most $max_exposure)"
    else
        fail "systemd-analyze security rates $unit '${score:-no score}' (at most $max_exposure)"
        systemd-analyze security --offline=yes "$scratch/units/$unit" 2>&1 | grep '✗' | sed 's/^/     /'
    fi
    check "every hardening item left out of $unit is explained" explained "systemd/$unit"
done

# --- what promptd needs from its units ---

has() { # has UNIT REGEX...: every line pattern occurs
    local unit=$1 pattern
    shift
    for pattern in "$@"; do
        grep -Eq "^$pattern" "$unit" || { echo "$unit: no line matching ^$pattern"; return 1; }
    done
}
for unit in systemd/promptd.service systemd/promptd@.service; do
    check "$unit: notify, watchdog, reporting reload, no restart loop, directories" has "$unit" \
        'Type=notify$' 'NotifyAccess=main$' 'WatchdogSec=[0-9]+s$' \
        'ExecReload=/usr/bin/promptctl reload --admin ' 'Restart=on-failure$' \
        'RestartPreventExitStatus=.*\b78\b' 'StateDirectory=promptd' \
        'ConfigurationDirectory=promptd$' 'RuntimeDirectory=promptd' \
        'Environment=OPENBLAS_NUM_THREADS=1$' 'User=promptd$' 'UMask=0077$' \
        'ExecStart=/usr/bin/promptd --config /etc/promptd/[^ ]+\.conf --set admin\.socket=%t/promptd/'
done
check "the template gives each instance its config, state, admin socket" has \
    systemd/promptd@.service 'ExecStart=.* --config /etc/promptd/%i\.conf .*%t/promptd/%i/admin\.sock$' \
    'ExecReload=.*%t/promptd/%i/admin\.sock$' 'StateDirectory=promptd/%i$' \
    'RuntimeDirectory=promptd/%i$'

# --- sysusers.d and tmpfiles.d, applied to a scratch root ---

apply_snippets() {
    local root=$scratch/root uid gid
    mkdir -p "$root/etc/promptd"
    echo "kafka.brokers embedded" >"$root/etc/promptd/promptd.conf"
    chmod 0644 "$root/etc/promptd/promptd.conf"
    systemd-sysusers --root="$root" "$PWD/systemd/promptd.sysusers" || return 1
    uid=$(awk -F: '$1 == "promptd" { print $3 }' "$root/etc/passwd")
    gid=$(awk -F: '$1 == "promptd" { print $3 }' "$root/etc/group")
    [ -n "$uid" ] && [ -n "$gid" ] || { echo "no promptd user or group"; return 1; }
    grep -q '^promptd:.*:/usr/sbin/nologin$' "$root/etc/passwd" || { echo "promptd has a shell"; return 1; }
    systemd-tmpfiles --root="$root" --create "$PWD/systemd/promptd.tmpfiles" || return 1
    expect_stat "$root/etc/promptd" "0:$gid 750" &&
        expect_stat "$root/etc/promptd/policies" "0:$gid 750" &&
        expect_stat "$root/etc/promptd/promptd.conf" "0:$gid 640" &&
        expect_stat "$root/var/lib/promptd" "$uid:$gid 750"
}
expect_stat() {
    local got
    got=$(stat -c '%u:%g %a' "$1")
    [ "$got" = "$2" ] || { echo "$1: expected $2, got $got"; return 1; }
}
if [ "$(id -u)" -eq 0 ]; then
    check "sysusers.d and tmpfiles.d create the user and directories" apply_snippets
else
    echo "skip sysusers.d and tmpfiles.d (needs root to set owners)"
fi

# --- man pages ---

man_clean() { # groff prints nothing with every warning on, and man renders the page
    local page=$1 warnings
    warnings=$(groff -man -Tutf8 -ww -z "$page" 2>&1)
    [ -z "$warnings" ] || { echo "$warnings"; return 1; }
    MANWIDTH=80 man -l "$page" >"$scratch/rendered" 2>&1 || { cat "$scratch/rendered"; return 1; }
    shift
    for section in "$@"; do
        grep -q "^$section" "$scratch/rendered" || { echo "$page: no $section section"; return 1; }
    done
}
check "promptd(8) renders without warnings and has its sections" man_clean man/promptd.8 \
    NAME SYNOPSIS DESCRIPTION OPTIONS "HTTP ENDPOINTS" METRICS SIGNALS "EXIT STATUS" \
    ENVIRONMENT FILES EXAMPLES "SEE ALSO"
check "promptctl(1) renders without warnings and has its sections" man_clean man/promptctl.1 \
    NAME SYNOPSIS COMMANDS OPTIONS "EXIT STATUS" FILES EXAMPLES "SEE ALSO"

# --- the dashboard and the alert rules ---

check "the dashboard and the alert rules are well-formed and use documented metrics" \
    /usr/bin/python3 - conf/grafana-dashboard.json conf/prometheus-alerts.yml man/promptd.8 <<'EOF'
import json, re, sys

dash_path, alerts_path, man_path = sys.argv[1:4]
problems = []

# The metric names promptd(8) documents, from its METRICS section.
man = open(man_path).read()
section = man[man.index(".SH METRICS"):man.index(".SH SIGNALS")]
documented = set(re.findall(r"\b((?:promptd|process)_[a-z_]+)", section))

def metrics_of(expr):
    names = set()
    for name in re.findall(r"\b((?:promptd|process)_[a-z_]+)", expr):
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name[: -len(suffix)] in documented:
                name = name[: -len(suffix)]
        names.add(name)
    return names

dash = json.load(open(dash_path))
if dash.get("uid") != "promptd-overview":
    problems.append("dashboard: the uid must stay promptd-overview")
variables = {v["name"]: v for v in dash["templating"]["list"]}
if variables.get("DS_PROMETHEUS", {}).get("type") != "datasource":
    problems.append("dashboard: no DS_PROMETHEUS datasource variable")
if not any(i.get("name") == "DS_PROMETHEUS" for i in dash.get("__inputs", [])):
    problems.append("dashboard: no DS_PROMETHEUS import input")
ids, exprs = set(), []
for panel in dash["panels"]:
    if panel["id"] in ids:
        problems.append(f"dashboard: panel id {panel['id']} twice")
    ids.add(panel["id"])
    if panel["type"] == "row":
        continue
    if panel.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
        problems.append(f"dashboard: panel '{panel['title']}' does not use ${{DS_PROMETHEUS}}")
    for t in panel["targets"]:
        if t.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
            problems.append(f"dashboard: a query of '{panel['title']}' has another datasource")
        exprs.append((panel["title"], t["expr"]))
for title, expr in exprs:
    for window in re.findall(r"\[([^\]]+)\]", expr):
        if window != "$__rate_interval":
            problems.append(f"dashboard: '{title}' uses [{window}], not [$__rate_interval]")
    for name in metrics_of(expr) - documented:
        problems.append(f"dashboard: '{title}' uses {name}, which promptd(8) does not document")

try:
    import yaml
except ImportError:
    problems.append("python3-yaml is not installed (make deps)")
else:
    rules = yaml.safe_load(open(alerts_path))
    names = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            names.add(rule["alert"])
            for key in ("expr", "labels", "annotations"):
                if key not in rule:
                    problems.append(f"alerts: {rule['alert']} has no {key}")
            if "severity" not in rule.get("labels", {}):
                problems.append(f"alerts: {rule['alert']} has no severity")
            if "summary" not in rule.get("annotations", {}):
                problems.append(f"alerts: {rule['alert']} has no summary")
            for name in metrics_of(rule["expr"]) - documented:
                problems.append(f"alerts: {rule['alert']} uses {name}, undocumented")
    for wanted in ("PromptdConsumerLagGrowing", "PromptdRewardDropping",
                   "PromptdPackReloadFailing", "PromptdRedisDown"):
        if wanted not in names:
            problems.append(f"alerts: no {wanted}")

print("\n".join(problems))
sys.exit(1 if problems else 0)
EOF

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
