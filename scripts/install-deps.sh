#!/usr/bin/env bash
# Installs everything kiln and its test suites call, on Debian 12 (bookworm), as root.
# Safe to run again: it only adds what is missing.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" != 0 ]; then
  echo "install-deps.sh: run as root (it calls apt-get)" >&2
  exit 1
fi

# qemu-system-x86 must come from bookworm-backports so that it matches the
# backports qemu-utils; add that suite next to the host's own Debian mirror.
mirror_uri() {
  local uri
  uri=$(awk '/^URIs:/ && !/security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list)
  fi
  echo "$uri"
}
if ! grep -rqsE 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  uri=$(mirror_uri)
  if [ -z "$uri" ]; then
    echo "install-deps.sh: no Debian mirror found in /etc/apt/sources.list*; add one first" >&2
    exit 1
  fi
  cat > /etc/apt/sources.list.d/kiln-backports.sources <<SRC
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

apt-get update -q
apt-get install -y -q --no-install-recommends \
  mmdebstrap debian-archive-keyring arch-test \
  e2fsprogs xfsprogs dosfstools btrfs-progs fdisk gdisk util-linux mount \
  grub-pc-bin grub-efi-amd64-bin grub-common \
  genisoimage xorriso squashfs-tools mtools shellcheck git ca-certificates curl rsync zstd xz-utils time bc python3 python3-venv socat \
  tar acl attr libcap2-bin openssh-client \
  gnupg gpg gpg-agent gpgv \
  tzdata locales \
  build-essential pkg-config
# The Arch and RHEL-family backends (pacstrap/pacman, dnf/rpm) and what their
# tests build local repositories with (makepkg, repo-add, rpmbuild, createrepo_c).
apt-get install -y -q --no-install-recommends \
  arch-install-scripts pacman-package-manager archlinux-keyring makepkg \
  dnf rpm createrepo-c rpm2cpio gpg libarchive-tools busybox-static
apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-utils
apt-get install -y -q --no-install-recommends ovmf
# The `kiln publish oci` / `kiln pull` tests: a real registry (CNCF
# distribution) that each test starts on 127.0.0.1 with its own config,
# skopeo to read pushed artifacts back, and htpasswd (bcrypt) for the
# registry's Basic authentication. `kiln serve`'s tests use curl (above).
apt-get install -y -q --no-install-recommends docker-registry skopeo apache2-utils
# The package enables a registry service on :5000; the tests need none.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
elif [ -x /etc/init.d/docker-registry ]; then
  /etc/init.d/docker-registry stop >/dev/null 2>&1 || true
fi

# moto in server mode: the local AWS (EC2, EBS direct APIs, IAM) that the
# `kiln publish aws` tests and bench/publish-aws.sh talk to on 127.0.0.1.
# A venv of its own, pinned, so the host's Python stays untouched; skipped
# when the pinned version is already there.
moto_version=5.2.1
venv=/opt/kiln-test/venv
if [ "$("$venv/bin/python3" -c 'import moto; print(moto.__version__)' 2>/dev/null)" != "$moto_version" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$moto_version"
fi
# OVHcloud's official Python client (PyPI `ovh`): kiln-deploy's signature
# tests run its own signing code as the oracle for kiln's; and `jsonschema`
# (which moto brings already), the independent judge of kiln's validation
# of reinstall bodies against OVH's schema.
ovh_version=1.2.0
if [ "$("$venv/bin/python3" -c 'import importlib.metadata as m, jsonschema; print(m.version("ovh"))' 2>/dev/null)" != "$ovh_version" ]; then
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "ovh==$ovh_version" jsonschema
fi
# oras-py, the ORAS Python SDK: the independent client that pulls what
# `kiln publish oci` pushed (and pushes what `kiln pull` fetches) in the
# OCI tests. Same venv, pinned.
oras_version=0.2.43
if [ "$("$venv/bin/python3" -c 'import oras; print(oras.__version__)' 2>/dev/null)" != "$oras_version" ]; then
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "oras==$oras_version"
fi
# spdx-tools (pyspdxtools), the SPDX project's own validator: the oracle of
# the SBOMs kiln writes beside each artifact. Same venv, pinned.
spdx_tools_version=0.8.5
if [ "$("$venv/bin/python3" -c 'import importlib.metadata as m; print(m.version("spdx-tools"))' 2>/dev/null)" != "$spdx_tools_version" ]; then
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "spdx-tools==$spdx_tools_version"
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    apt-get install -y -q --no-install-recommends cargo rustc
  fi
fi
# kiln needs Rust 1.89 or newer (Cargo.toml rust-version); Debian 12's own is older.
rust_minor=$(rustc --version | sed -n 's/^rustc 1\.\([0-9]*\).*/\1/p')
if [ "${rust_minor:-0}" -lt 89 ]; then
  echo "install-deps.sh: $(rustc --version) is too old; kiln needs Rust 1.89 or newer (install it with rustup)" >&2
  exit 1
fi
# CI runs `cargo fmt --check` and `cargo clippy -D warnings` before the tests.
if command -v rustup >/dev/null 2>&1; then
  if ! rustup component add clippy rustfmt; then
    echo "install-deps.sh: \`rustup component add clippy rustfmt\` failed (see above); CI needs both" >&2
    exit 1
  fi
fi
for sub in clippy fmt; do
  if ! cargo "$sub" --version >/dev/null 2>&1; then
    echo "install-deps.sh: \`cargo $sub\` does not run; install it with \`rustup component add ${sub/fmt/rustfmt}\`" >&2
    exit 1
  fi
done
