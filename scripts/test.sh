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
if [ "${1:-}" = "--fast" ]; then
  exit 0
fi

# The slow tests run one at a time (they count mounts, loop devices and
# processes machine-wide, and share the stage cache), except real_boot's:
# each of those boots one TCG guest with one vCPU, so two at a time keep
# both cores busy (their shared example builds take a lock). Its tests are
# skipped by exact name in the serial run, so none runs twice.
status=0
cargo test -p kiln --test real_boot -- --ignored --test-threads=2 || status=$?
skip=()
while IFS= read -r name; do
  skip+=(--skip "$name")
done < <(cargo test -q -p kiln --test real_boot -- --ignored --list --format terse | sed -n 's/: test$//p')
if [ "${#skip[@]}" -eq 0 ]; then
  echo "scripts/test.sh: real_boot lists no tests" >&2
  exit 1
fi
cargo test --workspace --no-fail-fast -- --ignored --test-threads=1 --exact "${skip[@]}" || status=$?
exit "$status"
