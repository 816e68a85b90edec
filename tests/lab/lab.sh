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
#
# autofs needs the host kernel's autofs file system. On a kernel built without it
# (CONFIG_AUTOFS_FS unset) `start` refuses, unless LAB_AUTOFS_STANDIN=1: autofs.service then
# runs a placeholder process in place of automount, so the unit is still stopped and started
# by systemd but nothing is automounted.
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

kernel_has_autofs() {
  grep -qw autofs /proc/filesystems && return 0
  modprobe autofs4 2>/dev/null || modprobe autofs 2>/dev/null || true
  grep -qw autofs /proc/filesystems
}

pid() {
  local dir nspawn
  dir=$(node_dir "$1")
  nspawn=$(cat "$dir/nspawn.pid" 2>/dev/null) || die "node $1 is not running"
  pgrep -P "$nspawn" -x systemd | head -1
}

start() {
  local name=$1 dir
  [ -d "$IMAGE" ] || build
  local standin=""
  if ! kernel_has_autofs; then
    [ "${LAB_AUTOFS_STANDIN:-}" = 1 ] || die "this kernel has no autofs file system (CONFIG_AUTOFS_FS), so autofs cannot run in a node; set LAB_AUTOFS_STANDIN=1 to run autofs.service with a placeholder process (unit control is still systemd's, nothing is automounted)"
    standin=1
  fi
  dir=$(node_dir "$name")
  [ -e "$dir/nspawn.pid" ] && stop "$name"
  mkdir -p "$dir/upper" "$dir/work" "$dir/root"
  mount -t overlay overlay -o "lowerdir=$IMAGE,upperdir=$dir/upper,workdir=$dir/work,redirect_dir=on" "$dir/root"
  echo "$name" > "$dir/root/etc/hostname"
  if [ -n "$standin" ]; then
    echo "lab: $name: autofs.service runs a placeholder (LAB_AUTOFS_STANDIN=1)" >&2
    mkdir -p "$dir/root/etc/systemd/system/autofs.service.d"
    printf '[Service]\nType=simple\nPIDFile=\nExecStart=\nExecStart=/bin/sleep infinity\nExecReload=\n' \
      > "$dir/root/etc/systemd/system/autofs.service.d/lab-standin.conf"
  fi
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
      case "$state" in running|degraded) autofs_up "$p" "$dir" "$name"; echo "$p"; return 0 ;; esac
    fi
    sleep 0.2
  done
  fail_start "$name" "node $name did not boot"
}

# A node that failed to come up is powered off (its console log kept) before failing.
fail_start() {
  local name=$1 why=$2 log
  log=$(mktemp /var/tmp/hostagent-lab-console.XXXXXX)
  cp "$(node_dir "$name")/console.log" "$log" 2>/dev/null || true
  stop "$name"
  die "$why; see $log"
}

# The tests expect autofs running, as on a production node. On a busy host its start can
# time out during boot (the node then comes up "degraded"); start it again until it runs.
autofs_up() {
  local p=$1 dir=$2 name=$3
  for _ in $(seq 1 5); do
    nsenter -t "$p" -m -u -i -n -p systemctl is-active -q autofs.service && return 0
    nsenter -t "$p" -m -u -i -n -p systemctl restart autofs.service >>"$dir/console.log" 2>&1 || sleep 1
  done
  nsenter -t "$p" -m -u -i -n -p journalctl -u autofs.service --no-pager -n 5 >>"$dir/console.log" 2>&1 || true
  fail_start "$name" "autofs does not start in the node"
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
  *) sed -n '2,19p' "$0" >&2; exit 2 ;;
esac
