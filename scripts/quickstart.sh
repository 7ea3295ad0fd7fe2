#!/usr/bin/env bash
# The quickstart: local stack up, build, start the selector on its embedded
# default (Iceberg on local files with a SQLite catalog) with the sampled
# topic and an OTLP forwarder to a local receiver (`otlp_receiver`), send the
# 10 seed traces, and print the kept ones from SQL and as the receiver got
# them. Both keep running; stop them with `scripts/stack.sh down`.
source "$(dirname "$0")/lib.sh"

ensure_build_deps
# On a fresh machine the broker's install and the project's build both take
# many minutes: run them side by side.
start_tansu_install
log "building (dev profile, shared target in $CARGO_TARGET_DIR)"
# The producer tools need the test-traffic feature.
cargo build --manifest-path "$ROOT/Cargo.toml" --bins --features testkit
wait_tansu_install
"$ROOT/scripts/stack.sh" up

RUN_DIR="$STATE_DIR/quickstart"
STACK_DIR="$STATE_DIR/stack"
ADMIN="127.0.0.1:${TSS_QUICKSTART_ADMIN_PORT:-8080}"
METRICS="127.0.0.1:${TSS_QUICKSTART_METRICS_PORT:-9090}"
OTLP="127.0.0.1:${TSS_QUICKSTART_OTLP_PORT:-4318}"
for proc in selector otlp_receiver; do
  if [ -f "$STACK_DIR/$proc.pid" ] && kill -0 "$(cat "$STACK_DIR/$proc.pid")" 2>/dev/null; then
    log "stopping the previous quickstart $proc"
    kill "$(cat "$STACK_DIR/$proc.pid")"
    sleep 2
  fi
done
rm -rf "$RUN_DIR"
mkdir -p "$RUN_DIR"

# A stand-in tracing backend: prints one line per span it receives.
log "starting a local OTLP/HTTP receiver on http://$OTLP/v1/traces"
nohup "$CARGO_TARGET_DIR/debug/otlp_receiver" --listen "$OTLP" \
  >"$RUN_DIR/otlp-received.txt" 2>"$RUN_DIR/otlp_receiver.log" &
echo $! >"$STACK_DIR/otlp_receiver.pid"

# Kept spans go to the table, to the sampled topic, and from that topic to
# the receiver (docs/configuration.md, "Sending kept traces on"). Static
# membership lets a rerun take the forwarder's partitions back at once.
cat >"$RUN_DIR/selector.toml" <<TOML
[sampled_topic]
enabled = true

[[forward]]
name = "local"
endpoint = "http://$OTLP/v1/traces"
group_instance_id = "quickstart-forward"
linger_ms = 200
TOML

log "starting the selector (inactivity timeout 3 s, flush every 2 s)"
(
  cd "$RUN_DIR"
  TSS__SAMPLING__INACTIVITY_TIMEOUT_SECS=3 \
  TSS__STORAGE__FLUSH_INTERVAL_SECS=2 \
  TSS__STORAGE__ICEBERG__CATALOG_URI="sqlite:$RUN_DIR/catalog.db?mode=rwc" \
  TSS__STORAGE__ICEBERG__WAREHOUSE="$RUN_DIR/warehouse" \
  TSS__SERVER__ADMIN_ADDR="$ADMIN" \
  TSS__SERVER__METRICS_ADDR="$METRICS" \
  TSS__KAFKA__GROUP_INSTANCE_ID=quickstart \
  nohup "$CARGO_TARGET_DIR/debug/tail-sampling-selector" --config "$RUN_DIR/selector.toml" \
    >"$RUN_DIR/selector.log" 2>&1 &
  echo $! >"$STACK_DIR/selector.pid"
)

for i in $(seq 1 120); do
  curl -fsS "http://$ADMIN/health/ready" >/dev/null 2>&1 && break
  [ "$i" -eq 120 ] && { tail -n 30 "$RUN_DIR/selector.log"; die "selector not ready; see $RUN_DIR/selector.log"; }
  sleep 0.5
done
log "selector ready: admin http://$ADMIN, metrics http://$METRICS/metrics"

"$CARGO_TARGET_DIR/debug/simple_producer" --brokers "127.0.0.1:$KAFKA_PORT"

metric() {
  curl -fsS "http://$METRICS/metrics" | awk -v m="$1" '$1 == m { print $2 }'
}
query() {
  curl -fsS "http://$ADMIN/admin/query" -H 'content-type: application/json' -d "{\"sql\": \"$1\"}"
}
# Every kept trace is committed in some Iceberg snapshot, possibly not the
# first one: wait until SQL sees as many kept traces as were decided, and every
# exported span.
log "waiting until every kept trace is visible in SQL"
for i in $(seq 1 120); do
  kept=$(metric 'tail_sampling_traces_sampled_total{reason="error"}')
  dropped=$(metric tail_sampling_traces_dropped_total)
  exported=$(metric 'tail_sampling_spans_exported_total{sink="iceberg"}')
  if [ "${kept:-0}" -ge 4 ] && [ "${dropped:-0}" -ge 6 ]; then
    visible=$(query "SELECT count(DISTINCT trace_id), count(*) FROM spans" \
      | python3 -c 'import json,sys; r=json.load(sys.stdin)["rows"][0]; print(r[0], r[1])' 2>/dev/null || echo "0 0")
    read -r traces spans <<<"$visible"
    if [ "$traces" -ge "$kept" ] && [ "$spans" -ge "${exported:-0}" ]; then break; fi
  fi
  [ "$i" -eq 120 ] && die "the kept traces did not all reach SQL in 60 s; see $RUN_DIR/selector.log"
  sleep 0.5
done

SQL="SELECT trace_id, status_code, duration_ms FROM spans WHERE parent_span_id IS NULL ORDER BY trace_id"
log "POST /admin/query: $SQL"
curl -fsS "http://$ADMIN/admin/query" -H 'content-type: application/json' \
  -d "{\"sql\": \"$SQL\"}" | python3 -c '
import json, sys
r = json.load(sys.stdin)
print("  ".join(f"{c:<32}" if c == "trace_id" else f"{c:>12}" for c in r["columns"]))
for row in r["rows"]:
    print(f"{row[0]:<32}  {row[1]:>12}  {row[2]:>12.1f}")
print("(%d rows, %d ms)" % (r["row_count"], r["elapsed_ms"]))'

# The kept spans at the receiver: at least once, so every one of the spans
# the table holds, duplicates possible after a crash.
log "waiting until the local OTLP receiver got every kept span"
for i in $(seq 1 120); do
  exported=$(metric 'tail_sampling_spans_exported_total{sink="iceberg"}')
  forwarded=$(metric 'tail_sampling_spans_exported_total{sink="otlp/local"}')
  [ "${forwarded:-0}" -ge "${exported:-1}" ] && break
  [ "$i" -eq 120 ] && die "the kept spans did not all reach the OTLP receiver in 60 s; see $RUN_DIR/selector.log"
  sleep 0.5
done
log "received by the OTLP receiver (trace_id span_id service name status; $RUN_DIR/otlp-received.txt):"
sort "$RUN_DIR/otlp-received.txt"

log "metrics:"
curl -fsS "http://$METRICS/metrics" | grep -E '^tail_sampling_(traces_sampled_total\{reason="error"\}|traces_dropped_total|spans_exported_total\{sink="[a-z_/]+"\}|iceberg_commits_total) '
log "the web UI: open http://$ADMIN/ to search the kept traces and see their waterfalls"
log "the selector and the OTLP receiver keep running (logs in $RUN_DIR); stop everything with scripts/stack.sh down"
