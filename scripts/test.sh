#!/usr/bin/env bash
# Runs kiln's tests: the fast tiers (`cargo test`), then the slow real tests
# (real Debian builds, chroot runs of make_image_bootable.sh), which are the
# `#[ignore]`d tests of the workspace. Needs root and scripts/install-deps.sh.
#   scripts/test.sh          fast and slow tests
#   scripts/test.sh --fast   only `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

cargo test --workspace
if [ "${1:-}" != "--fast" ]; then
  cargo test --workspace --no-fail-fast -- --ignored --test-threads=1
fi
