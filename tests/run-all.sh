#!/usr/bin/env bash
# Sets up and runs every check and test, on a fresh Debian machine, as root:
#   tests/run-all.sh
# Installs the system packages the tests use, then runs rustfmt, clippy (warnings are errors)
# and the whole test suite. Build output goes to $CARGO_TARGET_DIR (default: a cache outside
# the checkout, so repeated runs and fresh clones reuse it).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/hostagent/target}
mkdir -p "$CARGO_TARGET_DIR"

step() { printf '\n==> %s\n' "$*"; }

step "system packages"
packages=(acl attr libcap2-bin debootstrap systemd-container util-linux python3-pip python3-venv
  openssh-client openssl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
if [ "$(id -u)" != 0 ]; then
  echo "tests/run-all.sh: run as root: the tests restore owners, devices and capabilities" >&2
  exit 1
fi

step "python gRPC client (the API tests drive agentd with grpcio too)"
# The system's python3, so that the unauthorized-peer test can run the client as uid 65534
# (an interpreter under /root, pyenv's say, is out of its reach).
PY=/usr/bin/python3
setpriv --reuid=65534 --regid=65534 --clear-groups "$PY" -c "import grpc, grpc_tools" 2>/dev/null \
  || (umask 022 && { "$PY" -m pip install --quiet grpcio grpcio-tools \
    || "$PY" -m pip install --quiet --break-system-packages grpcio grpcio-tools; })

step "Garage, the S3 server the S3 tests run against (built once, then reused)"
if ! command -v garage >/dev/null && [ ! -x "$HOME/.cargo/bin/garage" ]; then
  cargo install --locked garage
fi
# Here the S3 tests must run: without a server they fail instead of saying they did not run.
export HOSTAGENT_TEST_REQUIRE_S3=1

step "Ansible and ansible-lint (a virtualenv, cached), for the deployment test"
VENV=${HOSTAGENT_VENV:-/var/cache/hostagent/venv}
if ! "$VENV/bin/ansible-playbook" --version >/dev/null 2>&1 || ! "$VENV/bin/ansible-lint" --version >/dev/null 2>&1; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet ansible-core==2.19.14 ansible-lint==26.10.1
fi

step "lab node image (debootstrap, cached)"
tests/lab/lab.sh build
# autofs needs the kernel's autofs file system. A kernel built without it cannot run autofs in
# any node: the lab then runs autofs.service with a placeholder process, so the tests still
# stop and start it through systemd, and says so here.
if ! grep -qw autofs /proc/filesystems && ! modprobe autofs4 2>/dev/null; then
  export LAB_AUTOFS_STANDIN=1
  echo "NOTE: this kernel ($(uname -r)) has no autofs file system: lab nodes run autofs.service" \
    "with a placeholder process (unit control is still systemd's; nothing is automounted)" >&2
fi

step "rustfmt"
cargo fmt --check

step "clippy"
cargo clippy --all-targets --quiet -- -D warnings

step "tests"
cargo test --quiet --no-fail-fast 2>&1 | tee "$CARGO_TARGET_DIR/test.log"
