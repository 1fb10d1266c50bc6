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

# The slow tests that boot run two at a time: each boots TCG guests with one
# vCPU, so two keep both cores busy, and none counts mounts, loop devices or
# processes machine-wide. The examples they share are built once, under a
# lock (and so is the replay's rescue system). The longest go first. The
# other slow tests then run one at a time (they count mounts, loop devices
# and processes machine-wide, and share the stage cache); the pooled tests
# are skipped there by exact name, so none runs twice.
#
# The installer replays boot a rescue VM with 2 vCPUs: two at once would put
# 4 vCPUs on the 2 cores, and TCG guests whose vCPUs are preempted spin on
# their locks (two replays together took 19 minutes each, against about 7
# alone). They run one at a time under a lock, queued apart, so the other
# lane boots one-vCPU guests meanwhile.
pooled=(real_cloud_image real_usb_installer real_deploy real_boot)
replays=" a_served_kiln_image_is_the_base_of_another_build_that_boots replay_bios_raid1_boots_and_passes_the_verdict "
jobs=()
for bin in "${pooled[@]}"; do
  names=$(cargo test -q -p kiln --test "$bin" -- --ignored --list --format terse | sed -n 's/: test$//p')
  if [ -z "$names" ]; then
    echo "scripts/test.sh: $bin lists no slow tests" >&2
    exit 1
  fi
  while IFS= read -r name; do
    jobs+=("$bin $name")
  done <<<"$names"
done

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
# shellcheck disable=SC2317 # xargs runs it, through export -f
run_one() {
  local bin=$1 name=$2 log="$logs/$1.$2.log" rc=0
  echo "slow test $bin::$name: started $(date -u +%T)"
  local lock=()
  case "$replays" in
    *" $name "*) lock=(flock "$logs/replay.lock") ;;
  esac
  "${lock[@]}" cargo test -p kiln --test "$bin" -- --ignored --exact "$name" >"$log" 2>&1 || rc=$?
  echo "slow test $bin::$name: exit $rc at $(date -u +%T)"
  cat "$log"
  return "$rc"
}
export -f run_one
export logs replays

status=0
printf '%s\n' "${jobs[@]}" | xargs -P 2 -L 1 bash -c 'run_one "$@"' _ || status=$?

skip=()
for job in "${jobs[@]}"; do
  skip+=(--skip "${job#* }")
done
cargo test --workspace --no-fail-fast -- --ignored --test-threads=1 --exact "${skip[@]}" || status=$?
exit "$status"
