#!/usr/bin/env bash
# The durability tests alone, with their figures: produce ~2,000 traces with
# known decisions while the selector is killed (SIGKILL, then SIGTERM) at 5
# random moments (on the SQLite catalog, and on the REST catalog with S3), in
# a crash loop with static membership, while a group member leaves, and while
# S3 is unreachable for 30 s; then read the table and print `lost=N duplicated=N`.
source "$(dirname "$0")/lib.sh"

ensure_build_deps
"$ROOT/scripts/stack.sh" up
[ -x "$CACHE_DIR/venv/bin/python" ] || die "run scripts/test.sh once first: it prepares $CACHE_DIR/venv"
export_test_env
cargo test --manifest-path "$ROOT/Cargo.toml" --test it -- durability:: --nocapture --test-threads 1 2>&1 \
  | grep -E '^(test |[a-z-]+: traces=|[a-z-]+: replayed|test result)|panicked|lost='
