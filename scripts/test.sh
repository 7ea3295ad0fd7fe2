#!/usr/bin/env bash
# The whole test suite: unit tests, and integration tests against the real
# local broker (Tansu), Redis, pyiceberg and the OpenTelemetry Python SDK.
source "$(dirname "$0")/lib.sh"

ensure_build_deps
"$ROOT/scripts/stack.sh" up
"$ROOT/scripts/stack.sh" postgres

VENV="$CACHE_DIR/venv"
REQS="$ROOT/tests/python/requirements.txt"
if [ ! -x "$VENV/bin/python" ] || ! cmp -s "$REQS" "$VENV/.requirements"; then
  log "preparing the Python test environment in $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -r "$REQS"
  cp "$REQS" "$VENV/.requirements"
fi
export TSS_TEST_PYTHON="$VENV/bin/python"

# Bytes freshly encoded by the OpenTelemetry Python SDK, for the decode test.
FIXTURE_DIR="$STATE_DIR/sdk-fixture"
mkdir -p "$FIXTURE_DIR"
"$TSS_TEST_PYTHON" "$ROOT/tests/python/make_otlp_fixture.py" "$FIXTURE_DIR/sdk_trace"
export TSS_SDK_FIXTURE="$FIXTURE_DIR/sdk_trace"
export TSS_TEST_BROKERS="127.0.0.1:$KAFKA_PORT"
export TSS_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export TSS_TEST_POSTGRES_URL="postgres://tss@127.0.0.1:${TSS_PG_PORT:-55432}/tss"
# The S3 tests start their own moto server from the same environment.
export TSS_TEST_MOTO_SERVER="$VENV/bin/moto_server"

log "running cargo test (target dir $CARGO_TARGET_DIR)"
# The benchmarks are harness-less programs: compile them, run them only with
# `cargo bench` (see docs/performance.md).
cargo build --manifest-path "$ROOT/Cargo.toml" --benches
cargo test --manifest-path "$ROOT/Cargo.toml" --lib --bins --tests -- --test-threads "${TSS_TEST_THREADS:-3}"
