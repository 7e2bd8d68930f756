// Module containerd builds containerd 2.x, ctr and containerd-shim-runc-v2
// for the real node in the VM (the kubelet 1.36 needs containerd 2; Debian
// ships 1.6/1.7). Its own module, so containerd's dependencies do not fight
// k8s.io/kubernetes's in e2e/tools.
module github.com/nftvs/nftvs/e2e/tools/containerd

go 1.26.6

require github.com/containerd/containerd/v2 v2.4.2
