#!/usr/bin/env bash
# Runs the decision-core benchmarks (benches/core.rs) and summarises them against the targets:
#   pod decision (parse + decide + patch)  < 20 µs
#   1,000-run namespace plan               < 5 ms
#
# Usage: hack/bench.sh [criterion args...]   e.g. hack/bench.sh pod_decision
# BENCH_STRICT=1 makes a missed target exit 1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log="$(mktemp "${TMPDIR:-/tmp}/affinity-assistant-bench.XXXXXX")"
trap 'rm -f "$log"' EXIT

# Criterion writes results to stdout and progress to stderr; keep stdout for the summary.
cargo bench --bench core -- --noplot "$@" | tee "$log"

echo
echo "== summary (criterion's point estimate; targets: pod decision < 20 µs, 1,000-run namespace plan < 5 ms) =="
# Criterion prints `<name>  time:   [low mid high]`, or the name on a line of its own and
# `time:` indented below it when the name is longer than 23 characters.
sed 's/\x1b\[[0-9;]*m//g' "$log" | awk -v strict="${BENCH_STRICT:-0}" '
function ns(v, unit) {
    if (unit == "ps") return v / 1000
    if (unit == "ns") return v
    if (unit == "µs" || unit == "us") return v * 1000
    if (unit == "ms") return v * 1000000
    if (unit == "s") return v * 1000000000
    return -1
}
/^[^ \t]/ && !/time:/ { pending = $1; next }
/time:[ \t]+\[/ {
    name = ($0 ~ /^[^ \t]/) ? $1 : pending
    body = $0
    sub(/.*\[/, "", body); sub(/\].*/, "", body)
    n = split(body, f, /[ \t]+/)
    # low lowunit mid midunit high highunit
    mid = f[3]; unit = f[4]
    t = ns(mid + 0, unit)
    target = ""; limit = 0
    # The target is the task pod (parse + decide + patch). admission_review parses the whole
    # envelope as a serde_json::Value first, which the webhook does not do: shown, not judged.
    if (name ~ /^pod_decision\// && name !~ /admission_review/) { target = "< 20 µs"; limit = 20000 }
    else if (name ~ /^namespace_plan\/.*\/1000$/) { target = "< 5 ms"; limit = 5000000 }
    verdict = ""
    if (limit > 0) {
        if (t >= 0 && t < limit) verdict = "ok"
        else { verdict = "MISSED"; missed++ }
        verdict = sprintf("target %-8s %s", target, verdict)
    }
    printf "%-46s %10s %-3s  %s\n", name, mid, unit, verdict
    found++
    pending = ""
}
END {
    if (!found) { print "no results parsed (filtered out, or criterion output changed)"; exit 1 }
    if (missed) { printf "%d target(s) missed\n", missed; if (strict == 1) exit 1 }
}'
