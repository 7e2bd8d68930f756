#!/usr/bin/env bash
# e2e.sh [-a] -f FOCUSFILE [-s SKIPFILE] -o OUTDIR: upstream's e2e tests (built
# from k8s.io/kubernetes v1.36.3 by e2e/tools/node/build.sh) against the
# cluster of e2e/cluster/cluster.sh (KUBECONFIG), one test at a time. Each
# file holds regular expressions, one per line (# comments), joined with
# |. The JUnit report lands in OUTDIR/junit_01.xml, the log in
# OUTDIR/e2e.log. -a: fail unless every line of FOCUSFILE matched a test
# that passed (a focus that matches nothing, or a test that skips itself,
# would otherwise pass).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
focus='' skip='' out='' all=0
while getopts af:s:o: o; do
  case $o in
    a) all=1 ;;
    f) focus=$OPTARG ;;
    s) skip=$OPTARG ;;
    o) out=$OPTARG ;;
    *) exit 2 ;;
  esac
done
[ -n "$focus" ] && [ -n "$out" ] || { echo "usage: e2e.sh [-a] -f FOCUSFILE [-s SKIPFILE] -o OUTDIR" >&2; exit 2; }
: "${KUBECONFIG:?run me through e2e/cluster/cluster.sh}"
# e2e-network.test: upstream's e2e.test linked with the sig-network
# suites only (e2e/tools/node/e2enetwork); NFTVS_E2E_BINARY=e2e.test for
# the whole of it.
e2e=${NFTVS_E2E_BINARY:-e2e-network.test}
# NFTVS_NODE_NOBUILD=1: the cache as it is (two runs at once must not
# relink the binary the other one is running).
if [ "${NFTVS_NODE_NOBUILD:-0}" = 1 ] && [ -x "${NFTVS_NODE_BIN:-}/$e2e" ]; then
  bin=$NFTVS_NODE_BIN
else
  bin=$("$root/e2e/tools/node/build.sh" "$e2e" kubectl)
fi
join() { grep -v -e '^#' -e '^[[:space:]]*$' "$1" | paste -sd '|'; }
mkdir -p "$out"
args=(--kubeconfig "$KUBECONFIG" --provider skeleton --kubectl-path "$bin/kubectl"
  --report-dir "$out" --disable-log-dump --dump-logs-on-failure=false --minStartupPods 0
  --ginkgo.focus "$(join "$focus")" --ginkgo.no-color --ginkgo.v
  # The framework shuffles every spec: one seed, so that two runs (one per
  # proxy) take the same tests in the same order.
  --ginkgo.seed "${NFTVS_E2E_SEED:-1}"
  --ginkgo.timeout "${NFTVS_E2E_TIMEOUT:-4h}")
[ -z "$skip" ] || args+=(--ginkgo.skip "$(join "$skip")")
# The images are on the node already; nothing is pulled (no registry here).
set +e
"$bin/$e2e" "${args[@]}" 2>&1 | tee "$out/e2e.log" |
  grep --line-buffered -E '^(•|Ran |FAIL|PASS|SUCCESS)|^  \[(FAILED|PANICKED)\]'
st=${PIPESTATUS[0]}
set -e
if [ "$all" = 1 ]; then
  # The names of the tests that passed, from the JUnit report.
  passed=$(grep -o '<testcase name="[^"]*" classname="[^"]*" status="passed"' "$out/junit_01.xml" 2>/dev/null |
    sed -e 's/^<testcase name="//' -e 's/" classname=.*//' -e 's/&#34;/"/g; s/&#39;/'"'"'/g; s/&amp;/\&/g')
  while IFS= read -r re; do
    if ! grep -qE -- "$re" <<<"$passed"; then
      echo "e2e: no test that passed matches [$re]" >&2
      st=1
    fi
  done < <(grep -v -e '^#' -e '^[[:space:]]*$' "$focus")
fi
exit "$st"
