#!/usr/bin/env bash
# conformance-parts.sh OUTDIR BUDGET PART...: run by conformance.sh through
# cluster.sh (KUBECONFIG set, nodes Ready): installs nftvs when the
# cluster's proxy is nftvs, then runs each PART of the selection in the
# order given, e2e.sh output in OUTDIR/PART/ (junit_01.xml, e2e.log,
# secs) and the proxy pods' logs after it (proxy.log). BUDGET: minutes of e2e.test for all parts together.
#
# A test belongs to the first part, in the order of $all_parts, whose
# focus file matches it: the parts never overlap, and "other" is the rest
# of the selection. Parts "dual" and "dual-rest" run on a dual-stack
# cluster (conformance.sh starts one for them): dual the DualStack
# tests, dual-rest the rest of the dual job's selection.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$1 budget=$2
shift 2
all_parts="disruptive slow conformance granular services other"
kubectl() { "$NFTVS_NODE_BIN/kubectl" "$@"; }

if [ "$NFTVS_NODE_PROXY" = nftvs ]; then
  "$here/install-nftvs.sh" || exit 1
fi
t0=$(date +%s) rc=0
for part in "$@"; do
  left=$((budget * 60 - $(date +%s) + t0))
  if [ "$left" -le 60 ]; then
    echo "conformance: no time left for part $part"
    rc=1
    continue
  fi
  mkdir -p "$out/$part"
  # Skip: the selection's skip list and every part before this one
  # (parts dual and dual-rest, on their dual-stack cluster: the dual
  # job's skip list, and for dual-rest part dual's tests).
  if [ "$part" = dual ]; then
    cp "$here/conformance-skip-dual.txt" "$out/$part/skip.txt"
  elif [ "$part" = dual-rest ]; then
    cat "$here/conformance-skip-dual.txt" "$here/conformance-part-dual.txt" >"$out/$part/skip.txt"
  else
    cp "$here/conformance-skip.txt" "$out/$part/skip.txt"
    for p in $all_parts; do
      [ "$p" != "$part" ] || break
      cat "$here/conformance-part-$p.txt" >>"$out/$part/skip.txt"
    done
  fi
  # A resumed part (conformance.sh, NFTVS_CONFORMANCE_RESUME=1): the
  # tests earlier runs gave a verdict are skipped too.
  [ ! -f "$out/resume-skip-$part.txt" ] || cat "$out/resume-skip-$part.txt" >>"$out/$part/skip.txt"
  focus=$here/conformance-part-$part.txt
  [ "$part" != other ] && [ "$part" != dual-rest ] || focus=$here/conformance-focus.txt
  if [ "$part" = disruptive ] && [ "$NFTVS_NODE_PROXY" = nftvs ]; then
    # The test restarts the pods labelled k8s-app=kube-proxy: nftvs's
    # DaemonSet is replaced by the same one under that label, the way a
    # user swaps the image of their kube-proxy DaemonSet.
    kubectl -n kube-system delete ds nftvs --wait=true --timeout=300s &&
      kubectl -n kube-system wait --for=delete pod -l k8s-app=nftvs --timeout=300s
    NFTVS_INSTALL_AS=kube-proxy "$here/install-nftvs.sh" || { rc=1; continue; }
  fi
  echo "conformance: part $part ($((left / 60)) min left)"
  t=$(date +%s)
  NFTVS_E2E_TIMEOUT=${left}s "$here/e2e.sh" -f "$focus" -s "$out/$part/skip.txt" -o "$out/$part" || rc=1
  echo "$(($(date +%s) - t))" >"$out/$part/secs"
  # Every node's proxy log (kube-proxy's or nftvs's pods; with a
  # selector kubectl keeps only 10 lines unless told otherwise):
  # conformance.sh keeps it beside the e2e log of a part that failed.
  kubectl -n kube-system logs -l 'k8s-app in (kube-proxy,nftvs)' --all-containers --prefix --timestamps \
    --tail=-1 --max-log-requests=20 >"$out/$part/proxy.log" 2>&1 || true
done
exit $rc
