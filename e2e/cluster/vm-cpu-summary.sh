#!/bin/bash
# vm-cpu-summary.sh LOG [FROM_SECONDS]: where the VM's CPU went, from a
# cluster's logs/vm-cpu.log (guest.sh samples it every 30 s), between
# the sample at or after FROM_SECONDS (default: the first) and the last:
# the mean load average, forks per second, and CPUs used (CPU seconds
# per second, summed over the nodes) by the nodes, their pods, and each
# kind of process — its own time and its children's (what it exec'd:
# kube-proxy IPVS mode's iptables and ipset), each from the first sample
# it appears in.
set -euo pipefail
log=${1:?usage: vm-cpu-summary.sh LOG [FROM_SECONDS]}
from=${2:-0}
awk -v from="$from" '
function flush() {
  if (t == "") return
  if (t0 == "" && t + 0 >= from + 0) { t0 = t; f0 = forks }
  if (t0 != "") {
    t1 = t; f1 = forks; loads += load; n++
    # A process that starts later (a proxy pod) counts from its first sample.
    for (k in cur) { if (!(k in first)) { first[k] = cur[k]; firstT[k] = t }; last[k] = cur[k] }
  }
  delete cur
}
/^t=/ {
  flush()
  t = substr($1, 3); sub(/s$/, "", t)
  load = substr($2, 6); forks = substr($3, 7)
  for (i = 4; i <= NF; i++) if ($i ~ /^node-[0-9]+=/ || $i ~ /^pods=/) {
    split($i, kv, "="); if (kv[1] ~ /^node/) node = kv[1]; else kv[1] = node "/pods"
    if (kv[2] != "-") cur[kv[1]] = kv[2]
  }
  next
}
/^  / {
  split($3, s, "="); split($4, c, "=")
  cur["proc " $1 " " $2 " self"] = s[2]; cur["proc " $1 " " $2 " children"] = c[2]
}
END {
  flush()
  if (n < 2) { print "vm-cpu-summary: fewer than two samples after " from " s"; exit 1 }
  dt = t1 - t0
  printf "%d samples, %d s (t=%s…%ss): load average %.1f (mean), forks %.1f/s\n", n, dt, t0, t1, loads / n, (f1 - f0) / dt
  for (k in last) if (t1 + 0 > firstT[k] + 0) {
    d = (last[k] - first[k]) / (t1 - firstT[k])
    if (k ~ /^proc /) { split(k, w, " "); sum[w[2] " (" w[4] ")"] += d } else if (k ~ /pods$/) sum["pods"] += d; else sum["nodes"] += d
  }
  for (k in sum) printf "  %-28s %.2f CPUs\n", k, sum[k] | "sort"
}' "$log"
