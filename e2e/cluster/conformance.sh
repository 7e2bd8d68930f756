#!/usr/bin/env bash
# conformance.sh [OUTDIR]: make conformance. The sig-network part of
# upstream's IPVS CI selection (conformance-focus.txt minus
# conformance-skip.txt) on the same kind of cluster (cluster.sh,
# NFTVS_NODES nodes, default 3), once per proxy: upstream kube-proxy
# 1.36.3 --proxy-mode=ipvs and nftvs installed from deploy/. Each proxy
# gets a fresh cluster and runs the selection in parts
# (conformance-part-*.txt, conformance-parts.sh), so that a whole run can
# be spread over several sittings. Writes OUTDIR (default
# docs/conformance):
#   junit-PROXY-PART.xml   each part's JUnit (a part not run this time
#                          keeps its earlier file)
#   logs/PROXY-PART.log    the e2e.test output of every failed test
#   logs/PROXY-PART-proxy.log  the proxy pods' logs of a part that
#                          failed (the last 4 MB)
#   manifest.tsv           one line per PROXY-PART run: date, commit,
#                          nftvs image commit, node count, kernel, wall
#                          time, verdict counts
#   results.md             the table (e2e/node/report) of every JUnit here
#                          but part dual-rest's
#   results-dual.md        the table of the dual-stack cluster's parts
#                          (dual, dual-rest): the dual job's selection
#
# Environment: NFTVS_CONFORMANCE_PROXIES (default "kube-proxy nftvs"),
# NFTVS_CONFORMANCE_PARTS (which parts, in that order; default
# "conformance services granular other slow disruptive dual dual-rest"; parts dual
# and dual-rest run last, on a dual-stack cluster of their own: dual
# is the DualStack tests, dual-rest the rest of upstream's dual-stack
# job's selection, most of it the tests the other parts run on the
# single-stack cluster),
# NFTVS_CONFORMANCE_PARALLEL=1 (both clusters at once, each in its own
# network namespace and VM), NFTVS_CONFORMANCE_BUDGET (minutes of
# e2e.test per proxy, default 600: what is not reached in time is not in
# that part's JUnit), NFTVS_CONFORMANCE_RESUME=1 (each part runs only the
# tests its earlier runs for that proxy gave no verdict, e.g. those a
# budget did not reach; its JUnit is kept beside theirs as
# junit-PROXY-PART-resumeN.xml, later files winning in the table;
# NFTVS_CONFORMANCE_RESUME=failed runs the failed ones again too).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/docs/conformance/three-node}
mkdir -p "$out/logs"
export PATH=/usr/local/go/bin:$PATH
work=$(mktemp -d /var/tmp/nftvs-conformance.XXXXXX)
budget=${NFTVS_CONFORMANCE_BUDGET:-600}
all_parts="conformance services granular other slow disruptive dual dual-rest"
parts=${NFTVS_CONFORMANCE_PARTS:-$all_parts}
for part in $parts; do
  case " $all_parts " in *" $part "*) ;; *) echo "conformance: NFTVS_CONFORMANCE_PARTS: unknown part $part" >&2; exit 2 ;; esac
done
proxies=${NFTVS_CONFORMANCE_PROXIES:-kube-proxy nftvs}
echo "conformance: work directory $work"

run() { # PROXY: one cluster, the parts in order; its output in $work/PROXY.log
  local proxy=$1 t st=0 v4parts='' dualparts='' part
  t=$(date +%s)
  # Parts dual and dual-rest need a dual-stack cluster of their own,
  # after the others.
  for part in $parts; do
    case $part in
      dual | dual-rest) dualparts+=" $part" ;;
      *) v4parts+=" $part" ;;
    esac
  done
  if [ -n "${v4parts// /}" ]; then
    # shellcheck disable=SC2086 # the parts are words
    NFTVS_NODE_DIR=$work/$proxy-cluster NFTVS_NODE_TIMEOUT=${NFTVS_NODE_TIMEOUT:-$((budget * 60 + 1800))} \
      "$here/cluster.sh" -p "$proxy" -k "$here/conformance-parts.sh" "$work/$proxy" "$budget" $v4parts >"$work/$proxy.log" 2>&1 || st=1
  fi
  if [ -n "${dualparts// /}" ]; then
    # shellcheck disable=SC2086 # the parts are words
    NFTVS_CLUSTER_STACK=dual NFTVS_NODE_DIR=$work/$proxy-dual-cluster NFTVS_NODE_TIMEOUT=${NFTVS_NODE_TIMEOUT:-$((budget * 60 + 1800))} \
      "$here/cluster.sh" -p "$proxy" -k "$here/conformance-parts.sh" "$work/$proxy" "$budget" $dualparts >>"$work/$proxy.log" 2>&1 || st=1
  fi
  echo "$(($(date +%s) - t))" >"$work/$proxy.secs"
  return $st
}

# Two clusters must not rebuild the cache under each other: build once
# here, then use it as it is.
if [ "${NFTVS_CONFORMANCE_PARALLEL:-0}" = 1 ] && [ "${NFTVS_NODE_NOBUILD:-0}" != 1 ]; then
  nice -n 15 "$root/e2e/tools/build.sh" >/dev/null &&
    nice -n 15 "$root/e2e/tools/node/build.sh" >/dev/null &&
    nice -n 15 "$root/e2e/tools/containerd/build.sh" >/dev/null &&
    nice -n 15 "$here/images.sh" >/dev/null || exit 1
  export NFTVS_NODE_NOBUILD=1
fi
# The JUnit files of PROXY's PART in $out, in the order they ran.
part_files() {
  local f n=1
  [ -f "$out/junit-$1-$2.xml" ] || return 0
  echo "$out/junit-$1-$2.xml"
  while f=$out/junit-$1-$2-resume$n.xml && [ -f "$f" ]; do
    echo "$f"
    n=$((n + 1))
  done
}
rc=0
declare -A pid
for proxy in $proxies; do
  mkdir -p "$work/$proxy"
  if [ "${NFTVS_CONFORMANCE_RESUME:-0}" != 0 ]; then
    # What earlier runs decided is skipped (conformance-parts.sh).
    for part in $parts; do
      mapfile -t files < <(part_files "$proxy" "$part")
      [ ${#files[@]} -gt 0 ] || continue
      but=()
      [ "$NFTVS_CONFORMANCE_RESUME" != failed ] || but=(-but-failed)
      (cd "$root" && go run ./e2e/node/report -verdicts "${but[@]}" "${files[@]}") >"$work/$proxy/resume-skip-$part.txt" || exit 1
      echo "conformance: $proxy, part $part resumes: $(wc -l <"$work/$proxy/resume-skip-$part.txt") tests already have a verdict"
    done
  fi
  echo "=== $proxy (log: $work/$proxy.log)"
  if [ "${NFTVS_CONFORMANCE_PARALLEL:-0}" = 1 ]; then
    run "$proxy" &
    pid[$proxy]=$!
  else
    run "$proxy" || rc=1
    echo "=== $proxy: $(($(cat "$work/$proxy.secs") / 60)) min"
  fi
done
for proxy in "${!pid[@]}"; do
  wait "${pid[$proxy]}" || rc=1
  echo "=== $proxy: $(($(cat "$work/$proxy.secs") / 60)) min"
done

# --- results -------------------------------------------------------------------
commit=$(git -C "$root" rev-parse --short HEAD)
image=$(cat "${NFTVS_CACHE:-/var/cache/nftvs}/image-work/nftvs.commit" 2>/dev/null | cut -c1-7)
kernel=$(cat "$("$root/e2e/vm/fetch-kernel.sh" "${NFTVS_KERNEL:-bookworm}")/version" 2>/dev/null)
[ -f "$out/manifest.tsv" ] || printf 'date\tcommit\tnftvs_image\tproxy\tpart\tnodes\tkernel\tseconds\tpassed\tfailed\tskipped\n' >"$out/manifest.tsv"
# passed, failed, skipped (by the test itself) of one JUnit file, tab-separated.
counts() { (cd "$root" && go run ./e2e/node/report "x=$1") | awk -F' [|] ' -v OFS='\t' '/^[|] x [|]/ { print $2, $3, $4 }'; }
for proxy in $proxies; do
  for part in $parts; do
    d=$work/$proxy/$part
    if [ ! -f "$d/junit_01.xml" ]; then
      echo "conformance: no JUnit from $proxy, part $part (see $work/$proxy.log)" >&2
      rc=1
      continue
    fi
    # A resumed part's JUnit goes beside the earlier ones.
    name=$part label=$part
    if [ -f "$work/$proxy/resume-skip-$part.txt" ]; then
      n=$(part_files "$proxy" "$part" | wc -l)
      name=$part-resume$n label="$part (resume $n)"
    fi
    cp "$d/junit_01.xml" "$out/junit-$proxy-$name.xml"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%RZ)" "$commit" "$image" "$proxy" "$label" \
      "${NFTVS_NODES:-3}" "$kernel" "$(cat "$d/secs" 2>/dev/null)" "$(counts "$d/junit_01.xml")" >>"$out/manifest.tsv"
    # The e2e.test output of each failed test: ginkgo -v prints a spec
    # between two lines of dashes; keep the blocks that failed. (No
    # interval expressions: Debian's awk is mawk.)
    awk '/^-+$/ && length($0) >= 20 { if (b ~ /\[(FAILED|PANICKED|TIMEDOUT|INTERRUPTED)\]/) printf "%s", b; b = ""; next }
         { b = b $0 "\n" }
         END { if (b ~ /\[(FAILED|PANICKED|TIMEDOUT|INTERRUPTED)\]/) printf "%s", b }' "$d/e2e.log" >"$out/logs/$proxy-$name.log"
    if [ -s "$out/logs/$proxy-$name.log" ]; then
      # The proxies' own side of those failures: the last 4 MB of every
      # node's proxy log (conformance-parts.sh).
      [ ! -s "$d/proxy.log" ] || tail -c 4000000 "$d/proxy.log" >"$out/logs/$proxy-$name-proxy.log"
    else
      rm -f "$out/logs/$proxy-$name.log"
    fi
  done
done

# table FILE TITLE PART...: the table of those parts' JUnit files. A test
# is one row, so the single-stack and the dual-stack cluster's runs of
# one test go in two tables.
table() {
  local file=$1 title=$2 proxy part label files args=()
  shift 2
  for proxy in kube-proxy nftvs; do
    files=()
    for part in "$@"; do
      mapfile -t -O ${#files[@]} files < <(part_files "$proxy" "$part")
    done
    [ ${#files[@]} -gt 0 ] || continue
    label=$proxy
    [ "$proxy" = kube-proxy ] && label="kube-proxy 1.36.3 IPVS mode"
    args+=("$label=$(IFS=,; echo "${files[*]}")")
  done
  [ ${#args[@]} -gt 0 ] || return 0
  (cd "$root" && go run ./e2e/node/report -title "$title" "${args[@]}") >"$out/$file"
  echo "conformance: $out/$file"
}
table results.md "Upstream e2e [sig-network] tests (upstream's IPVS CI selection) on ${NFTVS_NODES:-3} nodes" \
  conformance services granular other slow disruptive dual
table results-dual.md "Upstream e2e [sig-network] tests (upstream's dual-stack IPVS CI job's selection) on ${NFTVS_NODES:-3} dual-stack nodes" \
  dual dual-rest
exit $rc
