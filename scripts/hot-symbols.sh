#!/usr/bin/env bash
# Makes src/hot-symbols.txt: the functions of the release `coxswain` that real runs execute,
# which build.rs hands to the linker so they sit together (see build.rs for why).
#
# With every `coxswain` process under valgrind's callgrind, it runs `coxswain-bench e2e
# --quick` (`coxswain up`: the sync, store, controllers, scheduler and agent together), `pods
# --quick` (a lone agent and its launcher), `store --quick --no-peer` (`coxswain server`, one
# and three members) and `coxswain up` on examples-repo/ (a ConfigMap volume, and a minute
# of what an idle `up` does). Each function callgrind saw run, or saw called, is kept
# if the binary defines it, together with the names the list already has that the binary
# still defines (see below for the order). Three to five minutes; needs root (the pods are
# real) and valgrind.
#
# Make the list again after a toolchain update, large changes, or any change to a crate's
# dependencies (a crate's dependencies are part of the hash in each of its symbol names, so
# one new dependency renames the whole crate and the list stops matching it), from a build
# made the way scripts/dev.sh makes it (`--workspace`, so the features and with them the
# symbol names are the same), then rebuild. `nm` on the release binary against the list shows
# how much of it still matches.
set -euo pipefail
export LC_ALL=C

cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release/coxswain
BENCH=$TARGET_DIR/release/coxswain-bench

command -v valgrind >/dev/null || { echo "valgrind is needed: apt-get install valgrind" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "run as root: the benchmarks' pods are real processes" >&2; exit 2; }
[ -x "$BIN" ] && [ -x "$BENCH" ] || {
    echo "build first: cargo build --release --locked --workspace --bins" >&2
    exit 2
}

WORK=$(mktemp -d)
trap 'umount -l "$WORK/run" 2>/dev/null; rm -rf "$WORK"' EXIT
mkdir -p "$WORK/bin" "$WORK/out"
cp "$BIN" "$WORK/coxswain"
# The store benchmark starts the `coxswain` beside it, so the wrapper takes that name.
cp "$BENCH" "$WORK/bin/coxswain-bench"
# Containers' own programs (busybox, the host's tools) are not ours: they run natively. The
# store benchmark ends its servers with SIGKILL, which leaves callgrind no time to write, so
# every process also writes what it ran so far every 10^8 basic blocks.
cat > "$WORK/bin/coxswain" <<EOF
#!/bin/sh
exec valgrind -q --vgdb=no --tool=callgrind --demangle=no --dump-every-bb=100000000 \\
    --trace-children=yes \\
    --trace-children-skip='/bin/*,/usr/*,/sbin/*,*busybox*' \\
    --callgrind-out-file=$WORK/out/cg.%p $WORK/coxswain "\$@"
EOF
chmod +x "$WORK/bin/coxswain"

echo "==> e2e --quick under callgrind" >&2
"$WORK/bin/coxswain-bench" e2e --quick --coxswain "$WORK/bin/coxswain" >/dev/null
echo "==> pods --quick under callgrind" >&2
"$WORK/bin/coxswain-bench" pods --quick --coxswain "$WORK/bin/coxswain" >/dev/null
echo "==> store --quick --no-peer under callgrind" >&2
"$WORK/bin/coxswain-bench" store --quick --no-peer >/dev/null
# The README's `coxswain up` on examples-repo/: a ConfigMap mounted as a volume, which the
# benchmarks do not have. Its own name, bridge and pod range, so it never meets a running coxswain.
echo "==> up on examples-repo/ under callgrind" >&2
"$WORK/bin/coxswain" up --repo "$ROOT" --path examples-repo --listen 127.0.0.1:0 \
    --data "$WORK/up" --state-dir "$WORK/node" --run-dir "$WORK/run" --name hot-symbols --bridge cxhot \
    --pod-cidr 10.126.250.0/24 > "$WORK/up.log" 2>&1 &
UP=$!
for _ in $(seq 180); do
    grep -q "healthy" "$WORK/up.log" && break
    sleep 1
done
grep -q "healthy" "$WORK/up.log" || { cat "$WORK/up.log" >&2; echo "up never got healthy" >&2; }
# What an idle `up` does on timers (heartbeats, resyncs, metrics, the summary) runs too.
sleep 60
kill -INT "$UP"
wait "$UP" || { cat "$WORK/up.log" >&2; exit 1; }

# Callgrind names a function once per file as `fn=(id) name` or `cfn=(id) name`, and the
# command it ran as `cmd: BINARY SUBCOMMAND ...`. Each function gets a rank from the kinds of
# process that ran it, so that each kind's functions sit as close together as they can:
# first those the launcher ran (the fork helper is a process of its own), then those of the
# agent, then `up`'s, then only `server`'s; within a rank, the binary's own order.
awk 'FNR == 1 { kind = "" }
     FNR <= 10 && /^cmd:/ { kind = $3 }
     /^c?fn=\([0-9]+\) / {
         sub(/^c?fn=\([0-9]+\) /, "")
         if (kind == "__coxswain-launcher") l[$1] = 1
         else if (kind == "agent") a[$1] = 1
         else if (kind == "up") u[$1] = 1
         else s[$1] = 1
         seen[$1] = 1 }
     END { for (n in seen)
               print n, (n in l ? 0 : 8) + (n in a ? 0 : 4) + (n in u ? 0 : 2) + (n in s ? 0 : 1) }' \
    "$WORK"/out/cg.* \
    | sort -k1,1 > "$WORK/ran"
# The names already listed and not seen this time stay, last, while the binary still defines
# them: which rare paths a run takes (a snapshot, a flush, an election) depends on timing, and
# a function left out costs a whole 64 KiB of resident code wherever it lands.
if [ -f "$ROOT/src/hot-symbols.txt" ]; then
    grep -v '^#' "$ROOT/src/hot-symbols.txt" | sort -u | join -v 1 - "$WORK/ran" \
        | awk '{ print $1, 16 }' > "$WORK/kept"
    sort -k1,1 -o "$WORK/ran" "$WORK/ran" "$WORK/kept"
fi
nm --defined-only "$WORK/coxswain" | awk '$2 ~ /^[tTwW]$/ { print $3, $1 }' \
    | sort -k1,1 -u > "$WORK/defined"
{
    echo "# Made by scripts/hot-symbols.sh; build.rs hands it to the linker. One symbol a line."
    join "$WORK/ran" "$WORK/defined" | sort -k2,2n -k3,3 | awk '{ print $1 }'
} > "$ROOT/src/hot-symbols.txt"
echo "==> src/hot-symbols.txt: $(grep -vc '^#' "$ROOT/src/hot-symbols.txt") functions" >&2
