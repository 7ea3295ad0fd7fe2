#!/usr/bin/env bash
# The durability tests alone, with their figures: produce ~2,000 traces with
# known decisions while the selector is killed (SIGKILL, then SIGTERM) at 5
# random moments, while a group member leaves, and while S3 is unreachable for
# 30 s; then read the table and print `lost=N duplicated=N`.
source "$(dirname "$0")/lib.sh"

ensure_build_deps
"$ROOT/scripts/stack.sh" up
VENV="$CACHE_DIR/venv"
[ -x "$VENV/bin/moto_server" ] || die "run scripts/test.sh once first: it prepares $VENV"
export TSS_TEST_PYTHON="$VENV/bin/python"
export TSS_TEST_MOTO_SERVER="$VENV/bin/moto_server"
export TSS_TEST_BROKERS="127.0.0.1:$KAFKA_PORT"
export TSS_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
cargo test --manifest-path "$ROOT/Cargo.toml" --test durability -- --nocapture --test-threads 1 2>&1 \
  | grep -E '^(test |[a-z-]+: traces=|[a-z-]+: replayed|test result)|panicked|lost='
