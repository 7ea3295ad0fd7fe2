#!/bin/sh
# Refuses a binary that cannot run in the Linux image: it must be an ELF
# executable for x86_64 or aarch64. A binary built on macOS (Mach-O) would
# otherwise fail only at start, with "exec format error".
#
#   scripts/check-linux-binary.sh FILE...
# POSIX sh and od only, so that it runs inside debian:bookworm-slim.
set -eu

fail() {
  echo "error: $1: $2" >&2
  echo "Dockerfile.local needs a Linux binary. Build one on Linux (scripts/quickstart.sh)," >&2
  echo "or use the multi-stage Dockerfile, which builds inside the image." >&2
  exit 1
}

[ "$#" -gt 0 ] || { echo "usage: $0 FILE..." >&2; exit 2; }
for f in "$@"; do
  [ -f "$f" ] || fail "$f" "no such file"
  # Bytes 0-3: magic, 4: class (2 = 64-bit), 5: data (1 = little endian),
  # 18-19: e_machine (0x3e x86_64, 0xb7 aarch64).
  header=$(od -An -tx1 -N20 "$f" | tr -d ' \n')
  case "$header" in
    7f454c46*) ;;
    cffaedfe*|cefaedfe*|cafebabe*) fail "$f" "a Mach-O (macOS) binary, not Linux ELF" ;;
    4d5a*) fail "$f" "a Windows PE binary, not Linux ELF" ;;
    *) fail "$f" "not an ELF binary" ;;
  esac
  class=$(printf '%s' "$header" | cut -c9-10)
  machine=$(printf '%s' "$header" | cut -c37-40)
  [ "$class" = "02" ] || fail "$f" "a 32-bit ELF binary; x86_64 or aarch64 is needed"
  case "$machine" in
    3e00) arch=x86_64 ;;
    b700) arch=aarch64 ;;
    *) fail "$f" "an ELF binary for machine 0x$machine; x86_64 or aarch64 is needed" ;;
  esac
  echo "$f: Linux ELF $arch"
done
