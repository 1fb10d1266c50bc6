#!/bin/sh
# Assembles probe.S into the 512-byte boot sector that accel.rs compiles in
# (probe.bin beside this script, or the path given as $1). Needs binutils.
# The output is byte-for-byte reproducible; a test of accel.rs rebuilds it
# and compares it with the committed probe.bin.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/probe.bin}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
as --64 -o "$tmp/probe.o" "$here/probe.S"
ld -Ttext=0 -e 0 --oformat binary -o "$tmp/probe.bin" "$tmp/probe.o"
test "$(wc -c < "$tmp/probe.bin")" -eq 512
mv "$tmp/probe.bin" "$out"
