//go:build tools

// Package tools pins the upstream commands build.sh builds for a real
// node: the kubelet, the rest of the control plane, kubectl, agnhost (the
// e2e tests' image) and, through build.sh's go test -c, e2e.test.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/test/e2e"
	_ "k8s.io/kubernetes/test/images/agnhost"
)
