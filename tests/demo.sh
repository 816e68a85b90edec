#!/usr/bin/env bash
# The main job on the embedded default: a local repository, no S3. Builds agentctl, creates a
# repository under a temporary directory, snapshots a tree twice (the second run is
# incremental), lists the snapshots, restores the latest and compares it with the source.
# Usage: tests/demo.sh [TREE]   (default: /var/onprem if it exists, else /usr/share/doc)
set -euo pipefail
cd "$(dirname "$0")/.."
tree=${1:-}
if [ -z "$tree" ]; then
  if [ -d /var/onprem ]; then tree=/var/onprem; else tree=/usr/share/doc; fi
fi
cargo build --release --quiet --bin agentctl
bin=${CARGO_TARGET_DIR:-target}/release/agentctl
work=$(mktemp -d /tmp/hostagent-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
head -c 24 /dev/urandom | base64 > "$work/password"
chmod 600 "$work/password"
export HOSTAGENT_REPO="$work/repo" HOSTAGENT_PASSWORD_FILE="$work/password"

set -x
"$bin" repo init
"$bin" snapshot "$tree" --tag demo
"$bin" snapshot "$tree" --tag demo
"$bin" snapshots
"$bin" restore latest --target "$work/restore"
diff -r --no-dereference "$tree" "$work/restore$tree"
{ set +x; } 2>/dev/null
echo "demo: $tree restored byte-identical from $HOSTAGENT_REPO"
