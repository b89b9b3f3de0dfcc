#!/usr/bin/env bash
# Load test of the webhook over HTTPS on loopback (benches/webhook_load.rs): throughput,
# latency at a fixed rate, the same for a bare TLS server that only parses and re-serialises the
# AdmissionReview (the floor), our p99 as a ratio to the floor's, and the server's resident
# memory after 100,000 admissions. Reports; never fails on a missed aim.
#
# Aims: 10,000 admissions/s; at 2,000/s p50 < 0.5 ms and p99 < 2 ms; p99 < 1.5x the floor's;
# RSS < 40 MiB after 100,000 admissions.
#
# Usage: hack/webhook-load.sh
# Knobs (environment): WEBHOOK_LOAD_SECS (5), WEBHOOK_LOAD_CONNS (16), WEBHOOK_LOAD_RATE (2000),
# WEBHOOK_LOAD_TOTAL (100000), WEBHOOK_LOAD_SERVER_THREADS (2), WEBHOOK_LOAD_CLIENT_THREADS (2).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Server and load generator share this machine; the servers run as child processes of the
# bench binary so their memory is measured alone.
exec cargo bench --bench webhook_load -- "$@"
