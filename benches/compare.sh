#!/usr/bin/env bash
# End-to-end comparison of agentctl with restic, rustic and borg on one tree: first backup,
# unchanged re-backup, restore; wall time, throughput, CPU time and peak RSS of each.
#
# Usage: benches/compare.sh [TREE]
#   TREE        the tree to back up; default: $WORK/tree, built once from /usr/share/doc,
#               the rest of /usr/share, /usr/include and /usr/bin (~1 GB of text, compressed
#               documentation and executables).
# Environment:
#   WORK        scratch directory on the disk under test (default /var/tmp/hostagent-compare):
#               repositories, restores, caches and the password file live there.
#   AGENTCTL    the agentctl binary (default: target/release/agentctl under $CARGO_TARGET_DIR
#               or ./target); build it with `cargo build --release` first.
#   TOOLS       which tools to run (default "agentctl restic rustic borg"; missing ones are
#               skipped).
#   RESTORE_IN  where restores go (default $WORK); e.g. /dev/shm to take the file system's
#               cost of creating 50,000 files out of the restore figures.
#   RUNS        rounds (default 1); each round runs every tool once, starting with a different
#               tool each round; the table keeps each figure's best round (least disturbed by
#               other load on the machine).
#   KEEP=1      keep repositories and restored trees afterwards.
#
# Page caches cannot be dropped reliably here (shared machine, no root guarantees inside
# every environment), so the tree is read once before anything is measured: every tool then
# reads it from the page cache, and every tool's repository is fresh in the page cache when
# it restores. The figures therefore compare CPU and I/O-path efficiency, not disk speed.
# Restored trees are kept until the end: ext4 avoids reusing inodes freed in the last minutes,
# so deleting 50,000 files right before another tool's restore would slow that restore down.
# Passwords go through files or environment variables, never the command line.
set -euo pipefail

WORK=${WORK:-/var/tmp/hostagent-compare}
RESTORE_IN=${RESTORE_IN:-$WORK}
TOOLS=${TOOLS:-"agentctl restic rustic borg"}
here=$(cd "$(dirname "$0")/.." && pwd)
AGENTCTL=${AGENTCTL:-${CARGO_TARGET_DIR:-$here/target}/release/agentctl}
TIME=/usr/bin/time
[ -x "$TIME" ] || { echo "compare.sh: GNU time is needed at $TIME (apt-get install time)" >&2; exit 2; }
mkdir -p "$WORK"
have() { command -v "$1" >/dev/null 2>&1 || [ -x "$1" ]; }

build_default_tree() {
    local tree=$1
    [ -e "$tree/.complete" ] && return
    echo "building the default tree in $tree ..." >&2
    rm -rf "$tree"
    mkdir -p "$tree/share"
    cp -a /usr/share/doc "$tree/doc"
    for d in /usr/share/*; do
        [ "$d" = /usr/share/doc ] && continue
        cp -a "$d" "$tree/share/" 2>/dev/null || true
    done
    cp -a /usr/include "$tree/include"
    cp -a /usr/bin "$tree/bin"
    touch "$tree/.complete"
}

if [ $# -ge 1 ]; then
    TREE=$(cd "$1" && pwd)
else
    TREE=$WORK/tree
    build_default_tree "$TREE"
fi

bytes=$(find "$TREE" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
files=$(find "$TREE" -type f | wc -l)
echo "tree: $TREE, $files files, $(awk -v b="$bytes" 'BEGIN{printf "%.0f MB", b/1e6}')" >&2

# The warm-up read: afterwards the whole tree is in the page cache (24 GiB of RAM here).
echo "warm-up read of the tree ..." >&2
find "$TREE" -type f -print0 | xargs -0 cat >/dev/null

pw=$WORK/password
umask 077
head -c 24 /dev/urandom | base64 >"$pw"
umask 022

{
    echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))," \
        "$(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r), load average at start:" \
        "$(cut -d' ' -f1-3 /proc/loadavg)"
    for t in $TOOLS; do
        case $t in
        agentctl) have "$AGENTCTL" && echo "agentctl: $("$AGENTCTL" --version)" ;;
        restic) have restic && restic version | head -1 ;;
        rustic) have rustic && rustic --version | head -1 ;;
        borg) have borg && borg --version ;;
        esac
    done
} | tee "$WORK/machine.txt" >&2

results=$WORK/results.tsv
: >"$results"

# run TOOL STEP CMD...: runs CMD under GNU time, appends "tool step wall rss_kib cpu round"
# to the results, then syncs so that one step's write-back does not land in the next one's
# time.
run() {
    local tool=$1 step=$2
    shift 2
    local tf=$WORK/time.out
    if ! "$TIME" -f '%e %M %U %S' -o "$tf" "$@" >"$WORK/$tool-$step.log" 2>&1; then
        echo "compare.sh: $tool $step failed; see $WORK/$tool-$step.log" >&2
        tail -5 "$WORK/$tool-$step.log" >&2
        return 1
    fi
    read -r wall rss user sys <"$tf"
    local cpu
    cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN{print u+s}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$step" "$wall" "$rss" "$cpu" "$round" >>"$results"
    printf '  round %s %-8s %-9s %8.2f s wall %7.2f s CPU %7d KiB  (load %s)\n' "$round" \
        "$tool" "$step" "$wall" "$cpu" "$rss" "$(cut -d' ' -f1 /proc/loadavg)" >&2
    sync
}

# verify TOOL DIR: the restored copy must equal the tree (contents, names, symlinks).
verify() {
    local tool=$1 out=$2
    sync
    if diff -r --no-dereference "$TREE" "$out" >"$WORK/$tool-diff-$round.log" 2>&1; then
        printf '%s\tverify\tok\n' "$tool" >>"$results"
    else
        printf '%s\tverify\tDIFFERS\n' "$tool" >>"$results"
        echo "compare.sh: $tool restored a different tree; see $WORK/$tool-diff-$round.log" >&2
    fi
}

# fresh TOOL: a new repository and cache; sets $out, this round's (new) restore target.
fresh() {
    rm -rf "$WORK/repo-$1" "$WORK/cache-$1"
    out=$RESTORE_IN/restore-$1-$round
    rm -rf "$out"
    mkdir -p "$out" "$WORK/cache-$1"
}

read -r -a tools <<<"$TOOLS"
rm -rf "$RESTORE_IN"/restore-*
for ((round = 1; round <= ${RUNS:-1}; round++)); do
for ((k = 0; k < ${#tools[@]}; k++)); do
    tool=${tools[$(((k + round - 1) % ${#tools[@]}))]}
    case $tool in
    agentctl)
        have "$AGENTCTL" || { echo "skipping agentctl: $AGENTCTL not built" >&2; continue; }
        fresh agentctl
        export HOSTAGENT_REPO=$WORK/repo-agentctl HOSTAGENT_PASSWORD_FILE=$pw
        run agentctl init "$AGENTCTL" -q repo init
        run agentctl backup "$AGENTCTL" -q snapshot "$TREE"
        run agentctl rebackup "$AGENTCTL" -q snapshot "$TREE"
        run agentctl restore "$AGENTCTL" -q restore latest --target "$out"
        verify agentctl "$out$TREE"
        unset HOSTAGENT_REPO HOSTAGENT_PASSWORD_FILE
        ;;
    restic)
        have restic || { echo "skipping restic: not installed" >&2; continue; }
        fresh restic
        export RESTIC_REPOSITORY=$WORK/repo-restic RESTIC_PASSWORD_FILE=$pw
        export RESTIC_CACHE_DIR=$WORK/cache-restic
        run restic init restic init --repository-version 2
        run restic backup restic backup -q "$TREE"
        run restic rebackup restic backup -q "$TREE"
        run restic restore restic restore -q latest --target "$out"
        verify restic "$out$TREE"
        unset RESTIC_REPOSITORY RESTIC_PASSWORD_FILE RESTIC_CACHE_DIR
        ;;
    rustic)
        have rustic || { echo "skipping rustic: not installed" >&2; continue; }
        fresh rustic
        export RUSTIC_REPOSITORY=$WORK/repo-rustic RUSTIC_PASSWORD_FILE=$pw
        export RUSTIC_CACHE_DIR=$WORK/cache-rustic RUSTIC_NO_PROGRESS=true
        run rustic init rustic init
        run rustic backup rustic backup "$TREE"
        run rustic rebackup rustic backup "$TREE"
        run rustic restore rustic restore latest "$out"
        verify rustic "$out$TREE"
        unset RUSTIC_REPOSITORY RUSTIC_PASSWORD_FILE RUSTIC_CACHE_DIR RUSTIC_NO_PROGRESS
        ;;
    borg)
        have borg || { echo "skipping borg: not installed" >&2; continue; }
        fresh borg
        export BORG_REPO=$WORK/repo-borg BORG_PASSCOMMAND="cat $pw"
        export BORG_BASE_DIR=$WORK/cache-borg
        run borg init borg init --encryption=repokey-blake2
        run borg backup borg create ::first "$TREE"
        run borg rebackup borg create ::second "$TREE"
        (cd "$out" && run borg restore borg extract ::first)
        verify borg "$out$TREE"
        unset BORG_REPO BORG_PASSCOMMAND BORG_BASE_DIR
        ;;
    *) echo "compare.sh: unknown tool $tool" >&2; exit 2 ;;
    esac
done
done

# The table: per step, each tool's time, MB/s (tree bytes over wall time), CPU seconds and
# peak RSS; then agentctl against the fastest (and leanest) peer.
awk -F'\t' -v bytes="$bytes" '
    function max(x) { return x > 0.01 ? x : 0.01 }
    $2 == "verify" { if (ok[$1] != "DIFFERS") ok[$1] = $3; next }
    $2 == "init" { next }
    {
        k = $1 SUBSEP $2
        if (!(k in wall) || $3 < wall[k]) wall[k] = $3
        if (!(k in cpu) || $5 < cpu[k]) cpu[k] = $5
        if ($4 > rss[k]) rss[k] = $4
        if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 }
        if ($4 > peak[$1]) peak[$1] = $4
    }
    END {
        split("backup rebackup restore", steps, " ")
        printf "| tool | step | time s | MB/s | CPU s | peak RSS MiB |\n|---|---|---|---|---|---|\n"
        for (s = 1; s <= 3; s++) for (i = 1; i <= n; i++) {
            t = order[i]; st = steps[s]
            if ((t, st) in wall)
                printf "| %s | %s | %.2f | %.0f | %.2f | %.0f |\n", t, st, wall[t, st],
                    bytes / 1e6 / max(wall[t, st]), cpu[t, st],
                    rss[t, st] / 1024
        }
        printf "\nrestore verified (diff -r): "
        for (i = 1; i <= n; i++) printf "%s=%s ", order[i], ok[order[i]]
        printf "\n\n| step | fastest peer (wall) | agentctl speed-up, wall | "
        printf "most frugal peer (CPU) | agentctl CPU saving |\n|---|---|---|---|---|\n"
        for (s = 1; s <= 3; s++) {
            st = steps[s]; best = ""; frugal = ""
            for (i = 1; i <= n; i++) {
                t = order[i]
                if (t == "agentctl" || !((t, st) in wall)) continue
                if (best == "" || wall[t, st] < wall[best, st]) best = t
                if (frugal == "" || cpu[t, st] < cpu[frugal, st]) frugal = t
            }
            if (best != "" && ("agentctl", st) in wall)
                printf "| %s | %s %.2f s | %.2f× | %s %.2f s | %.2f× |\n", st, best,
                    wall[best, st], wall[best, st] / max(wall["agentctl", st]),
                    frugal, cpu[frugal, st], cpu[frugal, st] / max(cpu["agentctl", st])
        }
        lean = ""
        for (i = 1; i <= n; i++) {
            t = order[i]
            if (t != "agentctl" && (lean == "" || peak[t] < peak[lean])) lean = t
        }
        if (lean != "" && ("agentctl" in peak))
            printf "\npeak RSS over all steps: agentctl %.0f MiB, leanest peer %s %.0f MiB " \
                "(agentctl uses %.2f of it)\n",
                peak["agentctl"] / 1024, lean, peak[lean] / 1024, peak["agentctl"] / peak[lean]
    }' "$results"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
# Last, because deleting several restored trees takes minutes on ext4. Wait a few minutes
# before measuring restores again: freshly freed inodes slow down file creation.
if [ "${KEEP:-0}" != 1 ]; then
    echo "removing restored trees and repositories ..." >&2
    rm -rf "$RESTORE_IN"/restore-* "$WORK"/repo-* "$WORK"/cache-*
fi
