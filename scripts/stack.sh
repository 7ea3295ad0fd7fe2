#!/usr/bin/env bash
# The local stack: a Kafka-API broker (Tansu) on 127.0.0.1:9092 and Redis on
# 127.0.0.1:6379. Idempotent: what already runs is reused, what is missing is
# installed. Logs and pids live in .state/stack/.
#
#   scripts/stack.sh up | down | status
source "$(dirname "$0")/lib.sh"

STACK_DIR="$STATE_DIR/stack"
mkdir -p "$STACK_DIR"

tansu_bin() {
  command -v tansu 2>/dev/null || { [ -x "$HOME/.cargo/bin/tansu" ] && echo "$HOME/.cargo/bin/tansu"; } || true
}

ensure_tansu() {
  [ -n "$(tansu_bin)" ] && return 0
  ensure_build_deps
  log "installing Tansu $TANSU_VERSION with cargo (one time, about 20 minutes on 2 cores)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore
}

start_tansu() {
  if port_open "$KAFKA_PORT"; then
    log "Kafka API already answers on 127.0.0.1:$KAFKA_PORT"
    return 0
  fi
  ensure_tansu
  log "starting Tansu on 127.0.0.1:$KAFKA_PORT"
  nohup "$(tansu_bin)" broker \
    --kafka-cluster-id tss \
    --kafka-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --kafka-advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine memory://tansu/ \
    >"$STACK_DIR/tansu.log" 2>&1 &
  echo $! >"$STACK_DIR/tansu.pid"
  wait_port "$KAFKA_PORT" Tansu
}

start_redis() {
  if redis_ping; then
    log "Redis already answers PING on 127.0.0.1:$REDIS_PORT"
    return 0
  fi
  ensure_apt redis-server
  log "starting Redis on 127.0.0.1:$REDIS_PORT"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" \
    --appendonly no --dir "$STACK_DIR" --pidfile "$STACK_DIR/redis.pid" \
    --logfile "$STACK_DIR/redis.log"
  for _ in $(seq 1 50); do redis_ping && return 0; sleep 0.2; done
  die "Redis did not answer PING"
}

stop_pidfile() {
  local name=$1 file="$STACK_DIR/$1.pid"
  [ -f "$file" ] || return 0
  local pid
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$file"
}

status() {
  if port_open "$KAFKA_PORT"; then echo "kafka: up (127.0.0.1:$KAFKA_PORT)"; else echo "kafka: down"; fi
  if redis_ping; then echo "redis: up (127.0.0.1:$REDIS_PORT)"; else echo "redis: down"; fi
  if [ -f "$STACK_DIR/selector.pid" ] && kill -0 "$(cat "$STACK_DIR/selector.pid")" 2>/dev/null; then
    echo "selector: up (pid $(cat "$STACK_DIR/selector.pid"))"
  else
    echo "selector: down"
  fi
}

case "${1:-}" in
  up) start_redis; start_tansu; status ;;
  down) stop_pidfile selector; stop_pidfile tansu; stop_pidfile redis; status ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
