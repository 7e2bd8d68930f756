// Package takeover is the end-to-end test of --takeover-kube-proxy: in the
// test VM, upstream kube-proxy 1.36 runs in IPVS mode against a real API
// server on the host and serves a ClusterIP with endpoints in pod network
// namespaces; a long-lived TCP connection is opened through it; kube-proxy
// stops; the real nftvs binary starts with --takeover-kube-proxy=false,
// which must leave kube-proxy's state and name it in a Warning Event, then
// with its defaults, which take over. The connection must keep passing data, new connections must work, the IPVS
// virtual server must be the same one (its counters go on), and only
// kube-proxy's chains and ipsets may be gone.
//
// It carries the build tag vmtest and needs the API server wrapper:
//
//	go build -o /tmp/with-apiserver ./e2e/controlplane/with-apiserver
//	go build -o /tmp/nftvs ./cmd/nftvs
//	NFTVS_APISERVER_PORT=6452 NFTVS_NFTVS_BINARY=/tmp/nftvs go test -tags vmtest -count=1 -v \
//	    -exec "/tmp/with-apiserver $PWD/e2e/vm/vmexec" ./e2e/takeover/
//
// kube-proxy is NFTVS_KUBE_PROXY_BINARY, or the one e2e/tools/build.sh
// built in the cache. With NFTVS_TAKEOVER_SAVE_DIR=DIR (and
// NFTVS_VM_RW=DIR, so the guest may write there) the test writes
// kube-proxy's iptables-save there: internal/takeover's fixtures
// kube-proxy-1.36-vm*.rules come from it. This file holds no code: without
// the tag the package is empty.
package takeover
