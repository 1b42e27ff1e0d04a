#!/usr/bin/env bash
# Lays vipd's code out by use: runs the lab's benchmarks with every vipd
# process (manager and guardian) under valgrind's callgrind, and writes the
# functions they ran, the most run first, to link/vipd.order. build.rs hands
# that list to the linker, which puts those functions together at the start
# of .text.
#
# Why: the kernel maps a program's code into its RSS 64 KiB at a time
# around every page it runs. vipd runs about 3 MiB of its 8.5 MiB of code,
# but spread over nearly all of it, so every vipd carried 11-12 MiB of
# code pages; laid out by use, about 6.5 (BENCHMARKS.md, "Memory").
#
#   scripts/order-functions.sh      # as root, on a machine set up by scripts/setup.sh
#
# Under valgrind vipd runs twenty to fifty times slower, so the benchmarks'
# own timing checks may fail: only which functions ran counts. A function
# missing from the list (new code, renamed code) still works; it is only
# laid out with the rest, where running it maps its neighbours too. Rerun
# after larger changes; the measurement is `vipd-lab bench services`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

if ! command -v valgrind >/dev/null 2>&1; then
  echo "order-functions: installing valgrind" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends valgrind >/dev/null
fi
cargo build --release --workspace --bins

work=$(mktemp -d /tmp/vipd-order.XXXXXX)
trap 'rm -rf "$work"' EXIT
cat > "$work/vipd" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --demangle=no --dump-instr=no --collect-jumps=no \\
  --dump-every-bb=20000000 --trace-children=yes --trace-children-skip='*gobgpd*,*/ip,*/sh' \\
  --callgrind-out-file="$work/cg.%p" "$root/target/release/vipd" "\$@"
EOF
chmod +x "$work/vipd"

# Every mode vipd runs in: Services (leader, pools, IPv4 and IPv6, the
# heir's takeover), placement (svc_election), the control-plane VIP by
# Lease and by Raft, BGP with BFD, the API server frozen.
benches=(
  "services --sequential 10 --burst 300"
  "writes --services 100 --seconds 5 --modes placement"
  "failover --rounds 1"
  "raft --rounds 1 --vipd-only"
  "bgp --rounds 1 --hold-rounds 0"
  "outage --rounds 1 --freeze 5"
)
i=0
for b in "${benches[@]}"; do
  i=$((i + 1))
  mkdir -p "$work/$i"
  echo "order-functions: bench $b" >&2
  # shellcheck disable=SC2086
  timeout 900 target/release/vipd-lab --vipd "$work/vipd" bench $b >"$work/bench.log" 2>&1 \
    || echo "order-functions: (bench $b did not pass under valgrind; what ran still counts)" >&2
  mv "$work"/cg.* "$work/$i/" 2>/dev/null || true
done

mkdir -p link
python3 - target/release/vipd "$work" "$i" > link/vipd.order <<'EOF'
"""Functions callgrind saw run, in the order the linker lays them out.

Functions every benchmark ran come first, then those fewer ran, grouped
by which ones ran them: a vipd in one mode (Services only, say) then runs
one stretch of code, not its share of each mode's functions spread over
all of them. Within a group, the most run (self cost) first."""
import collections
import os
import re
import subprocess
import sys

exe, work, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
cost = collections.Counter()
ran_in = collections.defaultdict(set)
name_re = re.compile(r"^(c?fn)=\((\d+)\)(?: (.*))?$")
for run in range(1, runs + 1):
    folder = os.path.join(work, str(run))
    for dump in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        names, current, after_calls = {}, None, False
        with open(os.path.join(folder, dump), errors="replace") as f:
            for line in f:
                line = line.rstrip("\n")
                m = name_re.match(line)
                if m:
                    kind, ident, name = m.groups()
                    if name:
                        names[ident] = name
                    if names.get(ident) is not None:
                        ran_in[names[ident]].add(run)
                    if kind == "fn":
                        current = names.get(ident)
                    after_calls = False
                elif line.startswith("calls="):
                    after_calls = True
                elif line[:1].isdigit() or line[:1] in "+-*":
                    # The line after calls= is the call's inclusive cost.
                    if after_calls:
                        after_calls = False
                        continue
                    parts = line.split()
                    if current is not None and len(parts) >= 2 and parts[1].isdigit():
                        cost[current] += int(parts[1])
text = set()
nm = subprocess.run(["nm", "--defined-only", exe], capture_output=True, text=True, check=True)
for line in nm.stdout.splitlines():
    parts = line.split()
    if len(parts) == 3 and parts[1] in "tTwW":
        text.add(parts[2])
def key(name):
    runs_of = sorted(ran_in[name])
    return (-len(runs_of), runs_of, -cost[name], name)
order = [n for n in sorted(ran_in, key=key) if n in text]
sys.stderr.write(f"order-functions: {len(order)} functions ran ({len(ran_in)} with libraries)\n")
print("\n".join(order))
EOF
echo "order-functions: wrote link/vipd.order ($(wc -l < link/vipd.order) functions)" >&2
