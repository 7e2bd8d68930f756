// Package deploy holds nftvs's Kubernetes manifests (kubectl apply -k
// deploy/) and the Dockerfile; it has no code, only tests that decode the
// manifests strictly, load the ConfigMap's KubeProxyConfiguration through
// nftvs's own loader, and apply everything to a real kube-apiserver.
package deploy
