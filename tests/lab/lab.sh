#!/usr/bin/env bash
# The test lab: Debian nodes booted with systemd-nspawn.
#
#   tests/lab/lab.sh build           debootstrap the node image (cached under $LAB_CACHE)
#   tests/lab/lab.sh start NAME      boot a node from the image (an overlay: the image is never
#                                    modified); prints the PID of its systemd
#   tests/lab/lab.sh pid NAME        the PID of a running node's systemd
#   tests/lab/lab.sh root NAME       the node's root directory, as seen from the host
#   tests/lab/lab.sh exec NAME CMD…  run a command inside the node
#   tests/lab/lab.sh stop NAME       power the node off and remove its overlay
#
# Nodes share the host's network (loopback reaches test servers on the host). Inside, autofs
# runs; nfs-server cannot start (a container has no nfsd file system).
set -euo pipefail
LAB_CACHE=${LAB_CACHE:-/var/cache/hostagent/lab}
LAB_RUN=${LAB_RUN:-/var/tmp/hostagent-lab}
IMAGE="$LAB_CACHE/rootfs"
IMAGE_VERSION=2  # bump when the package list or the image's setup changes
PACKAGES=systemd,systemd-sysv,dbus,autofs,nfs-kernel-server,openssh-server,python3,sudo,iproute2,acl,attr,libcap2-bin
MIRROR=${LAB_MIRROR:-http://deb.debian.org/debian}

die() { echo "lab: $*" >&2; exit 1; }

build() {
  if [ "$(cat "$IMAGE/.hostagent-image" 2>/dev/null)" = "$IMAGE_VERSION" ]; then
    return 0
  fi
  command -v debootstrap >/dev/null && command -v systemd-nspawn >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap systemd-container
  }
  rm -rf "$IMAGE.new"
  mkdir -p "$LAB_CACHE"
  echo "lab: building the node image (debootstrap, about two minutes)" >&2
  debootstrap --variant=minbase --include="$PACKAGES" bookworm "$IMAGE.new" "$MIRROR" \
    > "$LAB_CACHE/debootstrap.log" 2>&1 || die "debootstrap failed; see $LAB_CACHE/debootstrap.log"
  # A unit that refuses to be stopped: the node-restore tests use it as a unit that will not stop.
  cat > "$IMAGE.new/etc/systemd/system/refuse-stop.service" <<'UNIT'
[Unit]
Description=A service that refuses a manual stop (hostagent lab)
RefuseManualStop=yes

[Service]
ExecStart=/bin/sleep infinity
UNIT
  mkdir -p "$IMAGE.new/var/onprem"
  echo "$IMAGE_VERSION" > "$IMAGE.new/.hostagent-image"
  rm -rf "$IMAGE"
  mv "$IMAGE.new" "$IMAGE"
}

node_dir() { echo "$LAB_RUN/$1"; }

pid() {
  local dir nspawn
  dir=$(node_dir "$1")
  nspawn=$(cat "$dir/nspawn.pid" 2>/dev/null) || die "node $1 is not running"
  pgrep -P "$nspawn" -x systemd | head -1
}

start() {
  local name=$1 dir
  [ -d "$IMAGE" ] || build
  dir=$(node_dir "$name")
  [ -e "$dir/nspawn.pid" ] && stop "$name"
  mkdir -p "$dir/upper" "$dir/work" "$dir/root"
  mount -t overlay overlay -o "lowerdir=$IMAGE,upperdir=$dir/upper,workdir=$dir/work,redirect_dir=on" "$dir/root"
  echo "$name" > "$dir/root/etc/hostname"
  mkdir -p /run/systemd/nspawn
  mountpoint -q /run/systemd/nspawn || mount -t tmpfs tmpfs /run/systemd/nspawn
  setsid systemd-nspawn -D "$dir/root" --boot --register=no --keep-unit -M "$name" \
    > "$dir/console.log" 2>&1 < /dev/null &
  echo $! > "$dir/nspawn.pid"
  local p=""
  for _ in $(seq 1 100); do
    p=$(pgrep -P "$(cat "$dir/nspawn.pid")" -x systemd | head -1 || true)
    if [ -n "$p" ]; then
      state=$(nsenter -t "$p" -m -u -i -n -p systemctl is-system-running 2>/dev/null || true)
      case "$state" in running|degraded) echo "$p"; return 0 ;; esac
    fi
    sleep 0.2
  done
  die "node $name did not boot; see $dir/console.log"
}

run_in() {
  local name=$1; shift
  nsenter -t "$(pid "$name")" -m -u -i -n -p -- "$@"
}

stop() {
  local name=$1 dir nspawn
  dir=$(node_dir "$name")
  nspawn=$(cat "$dir/nspawn.pid" 2>/dev/null || true)
  if [ -n "$nspawn" ] && kill -0 "$nspawn" 2>/dev/null; then
    run_in "$name" systemctl poweroff >/dev/null 2>&1 || true
    for _ in $(seq 1 50); do kill -0 "$nspawn" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$nspawn" 2>/dev/null || true
  fi
  umount "$dir/root" 2>/dev/null || umount -l "$dir/root" 2>/dev/null || true
  rm -rf "$dir"
}

cmd=${1:-}; shift || true
case "$cmd" in
  build) build ;;
  start) start "$@" ;;
  pid) pid "$@" ;;
  root) echo "$(node_dir "$1")/root" ;;
  exec) run_in "$@" ;;
  stop) stop "$@" ;;
  *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
