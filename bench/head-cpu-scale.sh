#!/bin/bash
# The head's CPU time through `fleet microbenchmark --scale` (1M tasks
# queued at once, then the smaller rows): polls /proc/HEAD/stat every
# 0.1 s and prints the head's user+system seconds when the 1M row is
# reported, and the last reading before it exits. CPU time, not a rate,
# so it means something on a busy machine too.
# Usage: bench/head-cpu-scale.sh path/to/fleet
set -u
B=${1:?usage: $0 path/to/fleet}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$B" microbenchmark --scale --scale-object-gib 0 >"$out" 2>&1 &
bench=$!
head=""
for _ in $(seq 1 200); do
  head=$(pgrep -P "$bench" -f "start --head" | head -1)
  [ -n "$head" ] && break
  sleep 0.1
done
[ -n "$head" ] || { echo "no head process found" >&2; wait "$bench"; exit 1; }
hz=$(getconf CLK_TCK)
last=0
at_row=""
while kill -0 "$bench" 2>/dev/null; do
  t=$(awk '{print $14 + $15}' "/proc/$head/stat" 2>/dev/null) && [ -n "$t" ] && last=$t
  if [ -z "$at_row" ] && grep -q "queued at once" "$out"; then at_row=$last; fi
  sleep 0.1
done
awk -v a="${at_row:-0}" -v l="$last" -v hz="$hz" \
  'BEGIN { printf "head CPU: %.2f s at the 1M row, %.2f s in all\n", a / hz, l / hz }'
grep "queued at once" "$out"
