#!/usr/bin/env bash
# The Ansible role, applied for real to two lab nodes over SSH:
#
#   tests/ansible/run.sh BIN_DIR      (BIN_DIR holds agentd and agentctl; as root)
#
# 1. ansible-lint passes on ansible/, with the production profile (ansible/.ansible-lint);
# 2. two nodes (dep-a, dep-b) boot, each with sshd on its own loopback port and a key made
#    for this run; the playbook (ansible/site.yml, secrets from ansible-vault) installs
#    agentd in both, dep-a with a local repository, dep-b with one on S3 (a Garage server
#    on the host); agentd runs and answers `agentctl status` in each, its repository
#    reachable; no secret shows in the playbook's output; a non-root member of the group
#    hostagent gets an answer too, a non-member exit status 13;
# 3. the installed unit (and dep-b's S3 drop-in, and agentd.socket) passes
#    `systemd-analyze verify` without a word; its `systemd-analyze security` exposure is no
#    higher than the README's figure;
# 4. under that unit, a tree with owners, setuid, user.* xattrs, a file capability and POSIX
#    ACLs is snapshotted and restored through agentd, and comes back identical; a node
#    restore runs with the units and post-restore step the role configured; dep-b takes a
#    snapshot into S3;
# 5. a second run of the playbook changes nothing;
# 6. an upgrade (a new agentd binary) while a snapshot runs on dep-a: the restart waits
#    until the snapshot has ended (it completes, it is not canceled), then agentd restarts
#    on the new binary, on both nodes;
# 7. socket activation on dep-b: with agentd.socket and agentd stopped, a group member's
#    `agentctl status` starts agentd; after `systemctl restart agentd` the socket still
#    answers members and refuses others (13).
#
# The snapshot is held in a pre-snapshot hook until the test opens a gate, and the gate is
# opened only once the playbook is seen waiting: nothing depends on timing.
# Ansible comes from the virtualenv $HOSTAGENT_VENV (default /var/cache/hostagent/venv).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BIN=$(realpath "${1:?usage: tests/ansible/run.sh BIN_DIR}")
VENV=${HOSTAGENT_VENV:-/var/cache/hostagent/venv}
export PATH="$VENV/bin:$PATH" ANSIBLE_FORCE_COLOR=0 ANSIBLE_NOCOLOR=1
export ANSIBLE_CONFIG=$ROOT/ansible/ansible.cfg ANSIBLE_HOST_KEY_CHECKING=False
LAB=$ROOT/tests/lab/lab.sh
NODES=(dep-a dep-b)
WORK=$(mktemp -d /var/tmp/hostagent-deploy.XXXXXX)
PASSWORD="repo-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
BG=""

step() { printf '\n==> %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
cleanup() {
  [ -n "$BG" ] && kill "$BG" 2>/dev/null || true
  [ -f "$WORK/garage/garage.pid" ] && kill "$(cat "$WORK/garage/garage.pid")" 2>/dev/null || true
  for n in "${NODES[@]}"; do "$LAB" stop "$n" || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
in_node() { local n=$1; shift; "$LAB" exec "$n" "$@"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
# "changed" and "failed" counts of a host in a PLAY RECAP (summed over the plays).
recap() {
  awk -v h="$2" -v k="$3" '$1 == h && $2 == ":" { for (i = 3; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) s += kv[2] } } END { print s + 0 }' "$1"
}
playbook() {
  local log=$1; shift
  ansible-playbook -i "$WORK/inventory.yml" --vault-password-file "$WORK/vault-pass" \
    "$ROOT/ansible/site.yml" "$@" > "$log" 2>&1
}
check_recap() {
  local log=$1 want_changed=$2 n
  for n in "${NODES[@]}"; do
    grep -q "^$n " "$log" || fail "$n is missing from the PLAY RECAP of $log"
    [ "$(recap "$log" "$n" failed)" = 0 ] && [ "$(recap "$log" "$n" unreachable)" = 0 ] \
      || { cat "$log"; fail "the playbook failed on $n"; }
    if [ -n "$want_changed" ] && [ "$(recap "$log" "$n" changed)" != "$want_changed" ]; then
      cat "$log"; fail "$n: changed=$(recap "$log" "$n" changed), expected $want_changed"
    fi
  done
  grep -F -- "$PASSWORD" "$log" >/dev/null && fail "the repository password shows in $log"
  grep -F -- "$HOSTAGENT_TEST_S3_SECRET_KEY" "$log" >/dev/null && fail "the S3 secret key shows in $log"
  grep -E '^(dep-a|dep-b) +:' "$log"
}
# The tree's metadata, one line per entry, paths relative to $1: type, mode, owner, size,
# mtime, link target, extended attributes (with ACLs and capabilities), content hash.
describe() {
  in_node dep-a sh -c 'cd "$1" && find . -mindepth 1 | LC_ALL=C sort | while read -r p; do
      printf "%s %s " "$p" "$(stat -c "%F %a %u %g %s %Y" "$p")"
      if [ -L "$p" ]; then readlink "$p"; elif [ -f "$p" ]; then sha256sum < "$p" | cut -c1-16; else echo; fi
      getfattr -h -d -m - -e hex "$p" 2>/dev/null | grep -v "^#" | grep . | LC_ALL=C sort || true
    done' describe "$1"
}

# Runs agentctl in node $1 as user $2; prints its exit status.
ctl_as() {
  local n=$1 u=$2; shift 2
  in_node "$n" runuser -u "$u" -- /usr/bin/agentctl "$@" > "$WORK/ctl-$u.out" 2>&1 && echo 0 || echo $?
}
# A member of the group agentd's socket is open to gets an answer; anyone else exit status 13.
check_group_access() {
  local n=$1 code
  code=$(ctl_as "$n" member status)
  [ "$code" = 0 ] || { cat "$WORK/ctl-member.out"; fail "$n: a member of group hostagent gets exit $code from agentctl status"; }
  grep -q "agentd .* on node $n" "$WORK/ctl-member.out" || { cat "$WORK/ctl-member.out"; fail "$n: no status for a group member"; }
  code=$(ctl_as "$n" outsider status)
  [ "$code" = 13 ] || { cat "$WORK/ctl-outsider.out"; fail "$n: a non-member gets exit $code, not 13"; }
  grep -q "Permission denied" "$WORK/ctl-outsider.out" || { cat "$WORK/ctl-outsider.out"; fail "$n: the refusal does not say why"; }
}
# systemd-analyze verify must say nothing at all: a warning is a failure.
verify_quiet() {
  local n=$1 out; shift
  out=$(in_node "$n" systemd-analyze verify "$@" 2>&1) || { echo "$out"; fail "$n: systemd-analyze verify $* failed"; }
  [ -z "$out" ] || { echo "$out"; fail "$n: systemd-analyze verify $* is not clean"; }
  echo "$n: systemd-analyze verify $*: clean"
}

step "ansible-lint (production profile, from ansible/.ansible-lint)"
(cd ansible && ansible-lint) > "$WORK/lint" 2>&1 || { cat "$WORK/lint"; fail "ansible-lint found problems"; }
cat "$WORK/lint"
grep -q "Profile 'production' was required, and it passed" "$WORK/lint" \
  || fail "ansible-lint did not hold the role to the production profile"

step "two nodes, each with sshd on its own port"
ssh-keygen -q -t ed25519 -N '' -C hostagent-deploy-test -f "$WORK/id"
declare -A PORT METRICS
for n in "${NODES[@]}"; do
  "$LAB" start "$n" > /dev/null
  r=$("$LAB" root "$n")
  PORT[$n]=$(free_port)
  METRICS[$n]=$(free_port)
  printf 'Port %s\nListenAddress 127.0.0.1\nPasswordAuthentication no\n' "${PORT[$n]}" \
    > "$r/etc/ssh/sshd_config.d/lab.conf"
  install -d -m 0700 "$r/root/.ssh"
  install -m 0600 "$WORK/id.pub" "$r/root/.ssh/authorized_keys"
  # The gate: a pre-snapshot hook that waits while /var/lib/lab-gate/closed exists.
  install -d "$r/var/lib/lab-gate"
  printf '#!/bin/sh\nwhile [ -e /var/lib/lab-gate/closed ]; do sleep 0.1; done\n' > "$r/usr/local/sbin/lab-gate"
  chmod 0755 "$r/usr/local/sbin/lab-gate"
  echo "127.0.1.1 $n" >> "$r/etc/hosts"
  in_node "$n" systemctl restart ssh.service
done
for n in "${NODES[@]}"; do
  for _ in $(seq 1 50); do
    ssh -i "$WORK/id" -p "${PORT[$n]}" -o BatchMode=yes -o StrictHostKeyChecking=no \
      -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR root@127.0.0.1 hostname 2>/dev/null \
      | grep -qx "$n" && continue 2
    sleep 0.2
  done
  fail "cannot reach $n over ssh on port ${PORT[$n]}"
done

step "the tree to back up on dep-a: owners, setuid, xattrs, a capability, ACLs"
in_node dep-a sh -ec '
  mkdir -p /var/onprem/etc/certs /var/onprem/bin
  echo "cluster: a" > /var/onprem/etc/config.yaml
  head -c 300000 /dev/urandom > /var/onprem/etc/certs/ca.key
  chown 1234:5678 /var/onprem/etc/certs/ca.key; chmod 0600 /var/onprem/etc/certs/ca.key
  cp /bin/true /var/onprem/bin/suid; chown 0:0 /var/onprem/bin/suid; chmod 4755 /var/onprem/bin/suid
  cp /bin/true /var/onprem/bin/pinger; setcap cap_net_raw+ep /var/onprem/bin/pinger
  setfattr -n user.origin -v node-a /var/onprem/etc/config.yaml
  setfacl -m u:1000:rwx,g:100:r-x /var/onprem/etc/certs
  setfacl -d -m u:1000:rx /var/onprem/etc/certs
  chmod 2775 /var/onprem/etc
  ln -s certs/ca.key /var/onprem/etc/current-key
  mkfifo /var/onprem/etc/fifo'

step "an S3 server (Garage) for dep-b's repository"
GARAGE_S3_PORT=$(free_port) GARAGE_RPC_PORT=$(free_port) HOSTAGENT_GARAGE_WATCH_PID=$$ \
  tests/garage/setup.sh "$WORK/garage"
# shellcheck disable=SC1091
. "$WORK/garage/env"
S3_URL="s3://$HOSTAGENT_TEST_S3_BUCKET/deploy-$(basename "$WORK")/dep-b"
printf '%s\n' "$PASSWORD" > "$WORK/password"
chmod 0600 "$WORK/password"
"$BIN/agentctl" --repo "$S3_URL" --s3-endpoint "$HOSTAGENT_TEST_S3_ENDPOINT" \
  --s3-region "$HOSTAGENT_TEST_S3_REGION" --s3-path-style \
  --s3-credentials-file "$WORK/garage/credentials" --password-file "$WORK/password" repo init

step "vault and inventory"
od -An -N24 -tx1 /dev/urandom | tr -d ' \n' > "$WORK/vault-pass"
mkdir -p "$WORK/bin1" "$WORK/bin2"
# Stripped, as a package ships them: debug builds carry hundreds of MB of debug information.
for b in agentd agentctl; do strip -o "$WORK/bin1/$b" "$BIN/$b"; done
vault() {
  printf '%s' "$2" | ansible-vault encrypt_string --vault-password-file "$WORK/vault-pass" \
    --stdin-name "$1" 2>/dev/null
}
vaulted=$(vault vault_hostagent_repository_password "$PASSWORD"
  vault vault_hostagent_s3_access_key_id "$HOSTAGENT_TEST_S3_ACCESS_KEY"
  vault vault_hostagent_s3_secret_access_key "$HOSTAGENT_TEST_S3_SECRET_KEY")
{
  echo "all:"
  echo "  children:"
  echo "    hostagent_nodes:"
  echo "      hosts:"
  for n in "${NODES[@]}"; do
    echo "        $n:"
    echo "          ansible_port: ${PORT[$n]}"
    echo "          hostagent_metrics_listen: \"127.0.0.1:${METRICS[$n]}\""
  done
  echo "          hostagent_repository_type: s3"
  echo "          hostagent_s3_url: $S3_URL"
  echo "          hostagent_s3_endpoint: $HOSTAGENT_TEST_S3_ENDPOINT"
  echo "          hostagent_s3_region: $HOSTAGENT_TEST_S3_REGION"
  echo "          hostagent_s3_access_key_id: \"{{ vault_hostagent_s3_access_key_id }}\""
  echo "          hostagent_s3_secret_access_key: \"{{ vault_hostagent_s3_secret_access_key }}\""
  cat <<EOF
      vars:
        ansible_host: 127.0.0.1
        ansible_user: root
        ansible_ssh_private_key_file: $WORK/id
        ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
        hostagent_binary_dir: "{{ hostagent_test_binary_dir | default('$WORK/bin1') }}"
        hostagent_repository_password: "{{ vault_hostagent_repository_password }}"
        hostagent_hooks_pre_snapshot:
          - argv: [/usr/local/sbin/lab-gate]
            timeout: 10m
        hostagent_restart_poll_delay: 1
        hostagent_restart_wait_timeout: 600
        hostagent_node_restore_units: [ssh.service, autofs.service]
        hostagent_node_restore_unit_timeout: 60s
        hostagent_node_restore_post_restore:
          - name: lab exports
            argv: [/usr/sbin/exportfs, -ra]
            timeout: 30s
EOF
  sed 's/^/        /' <<< "$vaulted"
} > "$WORK/inventory.yml"

step "first run: install"
t0=$(date +%s)
playbook "$WORK/run1.log" || { cat "$WORK/run1.log"; fail "the first run failed"; }
check_recap "$WORK/run1.log" ""
echo "first run: $(( $(date +%s) - t0 ))s"
for n in "${NODES[@]}"; do
  in_node "$n" systemctl is-active agentd.service
  in_node "$n" agentctl status | tee "$WORK/status-$n"
  grep -q "agentd .* on node $n" "$WORK/status-$n" || fail "$n: agentctl status does not name the node"
  grep -q "(reachable)" "$WORK/status-$n" || fail "$n: the repository is not reachable"
  [ "$(in_node "$n" stat -c '%a %U' /etc/hostagent/repo-password)" = "600 root" ] \
    || fail "$n: /etc/hostagent/repo-password is not 0600 root"
  in_node "$n" useradd --no-create-home --groups hostagent member
  in_node "$n" useradd --no-create-home outsider
  check_group_access "$n"
  echo "$n: a member of group hostagent is answered, a non-member refused (13)"
done
grep -q "repository: local:/var/backups/hostagent (reachable)" "$WORK/status-dep-a" \
  || fail "dep-a: not the local repository"
grep -qF "repository: $S3_URL at $HOSTAGENT_TEST_S3_ENDPOINT (reachable)" "$WORK/status-dep-b" \
  || fail "dep-b: not the S3 repository"
[ "$(in_node dep-b stat -c '%a %U' /etc/hostagent/s3-credentials)" = "600 root" ] \
  || fail "dep-b: /etc/hostagent/s3-credentials is not 0600 root"
in_node dep-b sh -ec 'mkdir -p /var/onprem/etc; echo "cluster: b" > /var/onprem/etc/config.yaml'
in_node dep-b agentctl snapshot --wait | tee "$WORK/snapshot-dep-b"
grep -q "Completed.* saved: 1 files" "$WORK/snapshot-dep-b" || fail "dep-b: the snapshot into S3 did not complete"

step "the installed unit: systemd-analyze verify and security"
for n in "${NODES[@]}"; do  # dep-b with the S3 credentials drop-in
  verify_quiet "$n" /etc/systemd/system/agentd.service
done
in_node dep-b test -f /etc/systemd/system/agentd.service.d/s3-credentials.conf
in_node dep-a systemd-analyze security --no-pager agentd.service | tee "$WORK/security"
exposure=$(sed -n 's/.*Overall exposure level for agentd.service: \([0-9.]*\).*/\1/p' "$WORK/security")
documented=$(sed -n 's/^`systemd-analyze security agentd.service`.*\*\*\([0-9.]*\) [A-Z]*\*\*.*/\1/p' README.md)
[ -n "$exposure" ] || fail "no exposure figure"
[ -n "$documented" ] || fail "README.md gives no exposure figure"
python3 -c "import sys; sys.exit(0 if $exposure <= $documented else 1)" \
  || fail "exposure $exposure is higher than the README's $documented"
echo "exposure $exposure (README: $documented)"

step "snapshot and restore through agentd, under the hardened unit"
in_node dep-a agentctl snapshot --wait
in_node dep-a agentctl restore latest --target /var/restore-drill --wait
describe /var/onprem > "$WORK/before"
describe /var/restore-drill/var/onprem > "$WORK/after"
grep -q "security.capability" "$WORK/before" && grep -q "system.posix_acl_default" "$WORK/before" \
  && grep -q "user.origin" "$WORK/before" && grep -q " 4755 0 0 " "$WORK/before" \
  || { cat "$WORK/before"; fail "the source tree lacks the metadata under test"; }
diff -u "$WORK/before" "$WORK/after" || fail "the restored tree differs from the original"
echo "restored tree identical: $(wc -l < "$WORK/before") entries with owners, modes, xattrs, ACLs, capability"
# The node restore under the unit, with the role's [node_restore] settings (the inventory's).
in_node dep-a sh -c 'echo "live change" > /var/onprem/etc/config.yaml'
in_node dep-a agentctl node-restore latest | tee "$WORK/node-restore"
for want in "post-restore: lab exports" "Completed: node restore of /var/onprem" \
    "units stopped and started again: ssh.service, autofs.service;"; do
  grep -qF "$want" "$WORK/node-restore" || fail "the node restore output lacks: $want"
done
[ "$(in_node dep-a cat /var/onprem/etc/config.yaml)" = "cluster: a" ] || fail "the node restore did not bring the file back"
for u in ssh.service autofs.service; do
  in_node dep-a systemctl is-active "$u" > /dev/null || fail "$u is not running after the node restore"
done
describe /var/onprem > "$WORK/after-node-restore"
diff -u "$WORK/before" "$WORK/after-node-restore" || fail "the node-restored tree differs from the original"
echo "node restore under the unit: units and post-restore step from the role, tree identical"

step "second run: nothing changes"
playbook "$WORK/run2.log" || { cat "$WORK/run2.log"; fail "the second run failed"; }
check_recap "$WORK/run2.log" 0

step "upgrade while a snapshot runs on dep-a"
cp "$WORK/bin1/agentd" "$WORK/bin1/agentctl" "$WORK/bin2/"
printf '\0' >> "$WORK/bin2/agentd"
pid_before=$(in_node dep-a systemctl show -P MainPID agentd.service)
in_node dep-a touch /var/lib/lab-gate/closed
op=$(in_node dep-a agentctl snapshot --json | json 'd["id"]')
[ "$(in_node dep-a agentctl status --json | json 'd["running"]["id"]')" = "$op" ] \
  || fail "the snapshot $op is not running"
playbook "$WORK/run3.log" -e hostagent_test_binary_dir="$WORK/bin2" &
BG=$!
# The handler is polling and has seen the snapshot running at least once.
for _ in $(seq 1 600); do
  grep -q "RETRYING: \[dep-a\]: Wait until agentd runs no operation" "$WORK/run3.log" && break
  kill -0 "$BG" 2>/dev/null || { cat "$WORK/run3.log"; fail "the upgrade run ended before waiting"; }
  sleep 0.5
done
grep -q "RETRYING: \[dep-a\]: Wait until agentd runs no operation" "$WORK/run3.log" \
  || { cat "$WORK/run3.log"; fail "the restart handler is not waiting"; }
[ "$(in_node dep-a systemctl show -P MainPID agentd.service)" = "$pid_before" ] \
  || fail "agentd was restarted while the snapshot ran"
in_node dep-a rm /var/lib/lab-gate/closed
wait "$BG" || { BG=""; cat "$WORK/run3.log"; fail "the upgrade run failed"; }
BG=""
check_recap "$WORK/run3.log" ""
grep -c "RETRYING: \[dep-a\]: Wait until agentd runs no operation" "$WORK/run3.log" \
  | sed 's/^/handler polls while the snapshot ran: /'
ops=$(in_node dep-a agentctl operations --json)
phase=$(json "[o for o in d if o['id'] == '$op'][0]['phase']" <<< "$ops")
finished=$(json "[o for o in d if o['id'] == '$op'][0]['finished']" <<< "$ops")
[ "$phase" = Completed ] || fail "the snapshot $op is $phase, not Completed"
started=$(in_node dep-a systemctl show --timestamp=us+utc -P ExecMainStartTimestamp agentd.service)
finished_s=$(date -d "$finished" +%s.%N)
started_s=$(date -d "${started#* }" +%s.%N)
echo "snapshot $op Completed at $finished; agentd restarted at $started"
python3 -c "import sys; sys.exit(0 if $started_s >= $finished_s else 1)" \
  || fail "agentd restarted ($started) before the snapshot ended ($finished)"
[ "$(in_node dep-a systemctl show -P MainPID agentd.service)" != "$pid_before" ] || fail "agentd was not restarted"
want=$(sha256sum < "$WORK/bin2/agentd")
for n in "${NODES[@]}"; do
  [ "$(in_node "$n" cat /usr/bin/agentd | sha256sum)" = "$want" ] || fail "$n does not run the new binary"
  in_node "$n" systemctl is-active agentd.service > /dev/null
  in_node "$n" agentctl status > /dev/null || fail "$n: agentd does not answer after the upgrade"
done

step "socket activation on dep-b (systemd/agentd.socket)"
r=$("$LAB" root dep-b)
install -m 0644 systemd/agentd.socket "$r/etc/systemd/system/agentd.socket"
in_node dep-b systemctl daemon-reload
verify_quiet dep-b /etc/systemd/system/agentd.socket /etc/systemd/system/agentd.service
in_node dep-b systemctl stop agentd.service
in_node dep-b systemctl enable --now agentd.socket
[ "$(in_node dep-b systemctl is-active agentd.service || true)" = inactive ] || fail "agentd runs before any connection"
[ "$(in_node dep-b stat -c '%a %U %G' /run/hostagent/agent.sock)" = "660 root hostagent" ] \
  || fail "the socket unit's socket is $(in_node dep-b stat -c '%a %U %G' /run/hostagent/agent.sock)"
check_group_access dep-b
in_node dep-b systemctl is-active agentd.service > /dev/null || fail "a connection did not start agentd"
# agentd logs "agentd ready" with the journal field ACTIVATED=true when it took the socket.
activated() { in_node dep-b journalctl -u agentd.service --no-pager -o cat ACTIVATED=true | grep -c "agentd ready" || true; }
[ "$(activated)" = 1 ] || { in_node dep-b journalctl -u agentd.service --no-pager | tail -20; fail "agentd did not take the socket from systemd"; }
pid1=$(in_node dep-b systemctl show -P MainPID agentd.service)
in_node dep-b systemctl restart agentd.service
[ "$(in_node dep-b systemctl show -P MainPID agentd.service)" != "$pid1" ] || fail "agentd was not restarted"
check_group_access dep-b
in_node dep-b systemctl stop agentd.service
check_group_access dep-b
in_node dep-b systemctl is-active agentd.service > /dev/null || fail "a connection after a stop did not start agentd"
[ "$(activated)" = 3 ] || fail "agentd did not take the socket from systemd at each of its 3 starts"
echo "socket activation: agentd started by a member's connection, the socket kept across restart and stop"
echo "deploy test passed"
