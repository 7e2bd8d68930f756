// Package proxier is the end-to-end test of nftvs's proxier: the real
// proxier (package proxier), fed by a fake clientset through its informers
// (proxier.Watch) and syncing with proxier.Run, programs the real IPVS,
// kube-ipvs0 and the nftables table of the VM's root network namespace,
// the "node". Pods and outside clients are network namespaces on veth
// pairs; every behaviour is checked by the traffic they see.
//
// The tests carry the build tag vmtest and run only inside the test VM:
//
//	go test -count=1 -tags vmtest -exec $PWD/e2e/vm/vmexec ./e2e/proxier/ -v
//
// This file holds no code: without the tag the package is empty.
package proxier
