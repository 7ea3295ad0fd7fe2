#!/usr/bin/env bash
# The whole test suite: unit tests, and integration tests against the real
# local broker (Tansu, also behind TLS), Redis (also over TLS), SeaweedFS (S3
# and an Iceberg REST catalog), PostgreSQL, pyiceberg, DuckDB, the
# OpenTelemetry Python SDK, and the web UI in headless Chromium (Playwright).
source "$(dirname "$0")/lib.sh"

ensure_build_deps
# TLS in front of the broker and certificates for the TLS tests.
ensure_apt stunnel4 openssl redis-server
# The web UI's browser tests: Debian's Chromium, driven by npm's
# playwright-core (which downloads no browser of its own).
ensure_apt chromium
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || ensure_apt nodejs npm
ensure_browser_tests
# The broker's install, the Python environment and the build are independent:
# on a fresh machine, run them side by side.
start_tansu_install

VENV="$CACHE_DIR/venv"
REQS="$ROOT/tests/python/requirements.txt"
prepare_venv() {
  if [ ! -x "$VENV/bin/python" ] || ! cmp -s "$REQS" "$VENV/.requirements"; then
    log "preparing the Python test environment in $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -r "$REQS"
    cp "$REQS" "$VENV/.requirements"
  fi
}
prepare_venv >"$STATE_DIR/venv.log" 2>&1 &
VENV_PID=$!

log "building the tests (target dir $CARGO_TARGET_DIR)"
# The benchmarks are harness-less programs: compile them, run them only with
# `cargo bench` (see docs/performance.md).
cargo build --manifest-path "$ROOT/Cargo.toml" --benches
cargo test --manifest-path "$ROOT/Cargo.toml" --lib --bins --tests --no-run
# The toolchain's own checks: formatting, and every clippy lint as an error.
ensure_lint_tools
log "checking formatting (cargo fmt --check) and lints (cargo clippy -D warnings)"
cargo fmt --manifest-path "$ROOT/Cargo.toml" --check
cargo clippy --manifest-path "$ROOT/Cargo.toml" --all-targets -- -D warnings
wait "$VENV_PID" || { tail -n 30 "$STATE_DIR/venv.log"; die "preparing the Python environment failed"; }
wait_tansu_install

"$ROOT/scripts/stack.sh" up
"$ROOT/scripts/stack.sh" postgres
export_test_env
export TSS_UI_SCREENSHOTS="$STATE_DIR/screenshots"

# Bytes freshly encoded by the OpenTelemetry Python SDK, for the decode test.
FIXTURE_DIR="$STATE_DIR/sdk-fixture"
mkdir -p "$FIXTURE_DIR"
"$TSS_TEST_PYTHON" "$ROOT/tests/python/make_otlp_fixture.py" "$FIXTURE_DIR/sdk_trace"
export TSS_SDK_FIXTURE="$FIXTURE_DIR/sdk_trace"

log "running cargo test (target dir $CARGO_TARGET_DIR)"
cargo test --manifest-path "$ROOT/Cargo.toml" --lib --bins --tests -- --test-threads "${TSS_TEST_THREADS:-3}"

# The matrix: the tests that touch decisions, durability and policies again,
# with every selector holding open traces as sketches (buffer.mode = compact),
# and the faults and sinks that kept traces meet after their second read.
log "running the decision, durability, policy and sink tests with buffer.mode = compact"
TSS_TEST_BUFFER_MODE=compact cargo test --manifest-path "$ROOT/Cargo.toml" --test it -- \
    --test-threads "${TSS_TEST_THREADS:-3}" \
    pipeline:: durability:: policies:: force_rules:: stream_time:: \
    faults::a_dead_stage faults::writer_commits_of_unknown_outcome \
    faults::a_backlog_drained_through_redis_stalls \
    forward::kept_spans_reach_the_sampled_topic forward::a_forwarder_killed_three_times
