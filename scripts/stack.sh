#!/usr/bin/env bash
# The local stack: a Kafka-API broker (Tansu) on 127.0.0.1:9092, Redis on
# 127.0.0.1:6379, and SeaweedFS with S3 on 127.0.0.1:8333 and an Iceberg REST
# catalog on 127.0.0.1:8181 (credentials tss-local / tss-local-secret,
# warehouse iceberg-tables). Idempotent: what already runs is reused, what is
# missing is installed. Logs, pids and data live in .state/stack/.
#
#   scripts/stack.sh up | down | status
#   scripts/stack.sh postgres   # also a private PostgreSQL for the catalog tests
source "$(dirname "$0")/lib.sh"

STACK_DIR="$STATE_DIR/stack"
mkdir -p "$STACK_DIR"

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

WEED_DIR="$STACK_DIR/seaweedfs"

# `weed mini`: master, volume, filer, S3 and the Iceberg REST catalog in one
# process. The REST catalog takes OAuth2 client credentials KEY:SECRET.
start_seaweedfs() {
  if port_open "$S3_PORT" && port_open "$ICEBERG_REST_PORT"; then
    log "S3 and the Iceberg REST catalog already answer on 127.0.0.1:$S3_PORT and :$ICEBERG_REST_PORT"
    return 0
  fi
  ensure_weed
  mkdir -p "$WEED_DIR/data"
  log "starting SeaweedFS: S3 on 127.0.0.1:$S3_PORT, Iceberg REST catalog on 127.0.0.1:$ICEBERG_REST_PORT"
  AWS_ACCESS_KEY_ID="$S3_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$S3_SECRET_KEY" \
    nohup "$(weed_bin)" mini -dir="$WEED_DIR/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
      -s3.port="$S3_PORT" -s3.port.iceberg="$ICEBERG_REST_PORT" \
      -tableBucket="$ICEBERG_WAREHOUSE" -admin.ui=false \
      >"$WEED_DIR/weed.log" 2>&1 &
  echo $! >"$STACK_DIR/seaweedfs.pid"
  for _ in $(seq 1 300); do
    if port_open "$S3_PORT" && port_open "$ICEBERG_REST_PORT" \
      && curl -fsS -o /dev/null -X POST "http://127.0.0.1:$ICEBERG_REST_PORT/v1/oauth/tokens" \
        -d "grant_type=client_credentials&client_id=$S3_ACCESS_KEY&client_secret=$S3_SECRET_KEY" 2>/dev/null; then
      return 0
    fi
    sleep 0.2
  done
  tail -n 30 "$WEED_DIR/weed.log"
  die "SeaweedFS did not start; see $WEED_DIR/weed.log"
}

PG_PORT="${TSS_PG_PORT:-55432}"
PG_DIR="$STACK_DIR/postgres"

# Runs a command as the owner of the private cluster: PostgreSQL refuses root.
as_pg_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] || die "PostgreSQL binaries not found under /usr/lib/postgresql"
  echo "$dir"
}

# A private PostgreSQL cluster on 127.0.0.1:$PG_PORT with a trusted `tss`
# user and database, for the SQL catalog tests. Reused when it answers.
start_postgres() {
  if port_open "$PG_PORT"; then
    log "PostgreSQL already answers on 127.0.0.1:$PG_PORT"
    return 0
  fi
  ensure_apt postgresql
  local bin
  bin=$(pg_bin)
  mkdir -p "$PG_DIR"
  [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$PG_DIR"
  if [ ! -f "$PG_DIR/data/PG_VERSION" ]; then
    log "creating a PostgreSQL cluster in $PG_DIR/data"
    as_pg_owner "$bin/initdb" -D "$PG_DIR/data" -A trust -U postgres >"$PG_DIR/initdb.log" 2>&1 \
      || die "initdb failed; see $PG_DIR/initdb.log"
  fi
  log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
  as_pg_owner "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w \
    -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null \
    || die "PostgreSQL did not start; see $PG_DIR/postgres.log"
  as_pg_owner "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc \
    "SELECT 1 FROM pg_roles WHERE rolname = 'tss'" | grep -q 1 \
    || as_pg_owner "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE ROLE tss LOGIN"
  as_pg_owner "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'tss'" | grep -q 1 \
    || as_pg_owner "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE tss OWNER tss"
}

stop_postgres() {
  [ -f "$PG_DIR/data/postmaster.pid" ] || return 0
  log "stopping PostgreSQL"
  as_pg_owner "$(pg_bin)/pg_ctl" -D "$PG_DIR/data" -m fast stop >/dev/null 2>&1 || true
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
  if port_open "$S3_PORT" && port_open "$ICEBERG_REST_PORT"; then
    echo "seaweedfs: up (S3 127.0.0.1:$S3_PORT, Iceberg REST 127.0.0.1:$ICEBERG_REST_PORT)"
  else
    echo "seaweedfs: down"
  fi
  if port_open "$PG_PORT"; then echo "postgres: up (127.0.0.1:$PG_PORT)"; fi
}

case "${1:-}" in
  up) start_redis; start_tansu; start_seaweedfs; status ;;
  postgres) start_postgres ;;
  down)
    stop_pidfile selector; stop_pidfile otlp_receiver; stop_pidfile tansu; stop_pidfile redis; stop_pidfile seaweedfs
    stop_postgres; status ;;
  status) status ;;
  *) echo "usage: $0 up|postgres|down|status" >&2; exit 2 ;;
esac
