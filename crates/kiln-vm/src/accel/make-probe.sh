#!/bin/sh
# Assembles probe.S into probe.bin, the fixture accel.rs's builder is checked against.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
as --64 -o "$tmp/probe.o" probe.S
ld -Ttext=0 -e 0 --oformat binary -o probe.bin "$tmp/probe.o"
test "$(wc -c < probe.bin)" -eq 512
