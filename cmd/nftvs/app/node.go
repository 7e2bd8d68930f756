package app

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/nftvs/nftvs/config"
	"github.com/nftvs/nftvs/proxier"
)

// nodeName is kube-proxy's: --hostname-override or the host name,
// trimmed and lower-cased.
func nodeName(override string) (string, error) {
	name := override
	if name == "" {
		h, err := os.Hostname()
		if err != nil {
			return "", fmt.Errorf("get hostname: %w", err)
		}
		name = h
	}
	name = strings.ToLower(strings.TrimSpace(name))
	if name == "" {
		return "", errors.New("empty hostname is invalid")
	}
	return name, nil
}

// nodeWatcher is kube-proxy's NodeManager: the one informer on this node
// (the proxier gets it too, for topology and node IPs), for its IPs and
// podCIDRs at start and its state for /healthz (a node being deleted or
// drained by the cluster autoscaler is not eligible for load-balancer
// traffic).
type nodeWatcher struct {
	informer *proxier.NodeInformer
	name     string

	mu   sync.Mutex
	node *v1.Node // as last seen, or as found at start
	// podCIDRs are the podCIDRs found at start; started is set once they
	// are known.
	podCIDRs         []string
	started          bool
	needPodCIDRs     bool
	onPodCIDRsChange func()
	// seen is signalled (without blocking) on every add or update, so
	// that start-up waits on the informer instead of polling its cache.
	seen chan struct{}
}

// Timeouts kube-proxy waits at start for the node's IPs, and for its
// podCIDRs when they are needed (detect-local-mode NodeCIDR).
const (
	nodeIPsTimeout  = 30 * time.Second
	podCIDRsTimeout = 5 * time.Minute
)

// watchNode starts the informer and waits for the node's IPs (at most
// nodeIPsTimeout: without them the node is assumed to be loopback, as in
// kube-proxy) and, with needPodCIDRs, for its podCIDRs (an error after
// podCIDRsTimeout). onPodCIDRsChange, when not nil, is called when the
// podCIDRs change later (also from none to some: a node whose IPAM came
// after nftvs): nftvs then exits, as kube-proxy does in NodeCIDR mode,
// to be restarted with them.
func watchNode(ctx context.Context, client proxier.NodeSource, name string, resync time.Duration, needPodCIDRs bool, onPodCIDRsChange func()) (*nodeWatcher, error) {
	w := &nodeWatcher{
		informer: proxier.NewNodeInformer(client, name, resync), name: name,
		needPodCIDRs: needPodCIDRs, onPodCIDRsChange: onPodCIDRsChange,
		seen: make(chan struct{}, 1),
	}
	if _, err := w.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    w.update,
		UpdateFunc: func(_, o any) { w.update(o) },
		DeleteFunc: func(obj any) {
			if n, ok := obj.(*v1.Node); ok {
				klog.InfoS("Node is being deleted", "node", klog.KObj(n))
			}
		},
	}); err != nil {
		return nil, fmt.Errorf("watch node %s: %w", name, err)
	}
	if err := proxier.StartAndSync(ctx, map[string]cache.SharedIndexInformer{"nodes": w.informer}, nil, func() { w.informer.Start(ctx.Done()) }); err != nil {
		return nil, fmt.Errorf("watch node %s: %w", name, err)
	}
	n, err := w.waitForStart(ctx)
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	if n != nil {
		w.podCIDRs = slices.Clone(n.Spec.PodCIDRs)
	}
	w.started = true
	if w.node == nil {
		w.node = n
	}
	w.mu.Unlock()
	return w, nil
}

// update records the node as the informer hands it, and reports podCIDRs
// that changed since the start.
func (w *nodeWatcher) update(obj any) {
	n, ok := obj.(*v1.Node)
	if !ok {
		return
	}
	w.mu.Lock()
	w.node = n
	changed := w.started && w.onPodCIDRsChange != nil && !slices.Equal(w.podCIDRs, n.Spec.PodCIDRs)
	old := w.podCIDRs
	w.mu.Unlock()
	select {
	case w.seen <- struct{}{}:
	default: // a wake-up is already pending
	}
	if changed && w.onPodCIDRsChange != nil {
		klog.InfoS("PodCIDRs changed for the node", "node", klog.KObj(n), "newPodCIDRs", n.Spec.PodCIDRs, "oldPodCIDRs", old)
		w.onPodCIDRsChange()
	}
}

// waitForStart waits, as kube-proxy does, for the node's IPs and, when
// they are needed, its podCIDRs; it returns the node as last seen (nil:
// not found).
func (w *nodeWatcher) waitForStart(ctx context.Context) (*v1.Node, error) {
	n := w.waitFor(ctx, nodeIPsTimeout, func(n *v1.Node) bool { return len(config.NodeHostIPs(n)) > 0 })
	if w.needPodCIDRs {
		n = w.waitFor(ctx, podCIDRsTimeout, func(n *v1.Node) bool { return len(n.Spec.PodCIDRs) > 0 })
		if n == nil {
			return nil, fmt.Errorf("timeout waiting for node %q to exist", w.name)
		}
		if len(n.Spec.PodCIDRs) == 0 {
			return nil, fmt.Errorf("timeout waiting for PodCIDR allocation on node %q", w.name)
		}
	}
	switch {
	case n == nil:
		klog.ErrorS(nil, "Timed out waiting for node to exist", "node", klog.KRef("", w.name))
	case len(config.NodeHostIPs(n)) == 0:
		klog.ErrorS(nil, "Timed out waiting for node to be assigned IPs", "node", klog.KRef("", w.name))
	}
	return n, nil
}

// waitFor waits until done holds for the node in the informer's cache,
// timeout passes or ctx ends. It wakes up when the informer sees the node
// change, not on a timer: a start-up on a loaded node polls nothing.
func (w *nodeWatcher) waitFor(ctx context.Context, timeout time.Duration, done func(*v1.Node) bool) *v1.Node {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		n := w.cached()
		if n != nil && done(n) {
			return n
		}
		select {
		case <-ctx.Done():
			return n
		case <-deadline.C:
			return w.cached()
		case <-w.seen:
		}
	}
}

// cached is the node in the informer's cache, or nil.
func (w *nodeWatcher) cached() *v1.Node {
	obj, ok, err := w.informer.GetStore().GetByKey(w.name)
	if err != nil || !ok {
		return nil
	}
	n, _ := obj.(*v1.Node)
	return n
}

// Node is the node as last seen, or nil.
func (w *nodeWatcher) Node() *v1.Node {
	if w == nil {
		return nil
	}
	if n := w.cached(); n != nil {
		return n
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.node
}

// ipv6Supported is kube-proxy's check: the kernel has IPv6 and it is not
// disabled.
func ipv6Supported() bool {
	if _, err := os.Stat("/proc/net/if_inet6"); err != nil {
		return false
	}
	b, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/disable_ipv6")
	return err != nil || strings.TrimSpace(string(b)) != "1"
}
