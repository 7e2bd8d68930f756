package app

import (
	"context"
	"unicode/utf8"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/nftvs/nftvs/config"
	"github.com/nftvs/nftvs/internal/kubeclient"
	"github.com/nftvs/nftvs/internal/takeover"
)

// nodeEvents records Events on this Node, and on Services it does not
// program as asked; recorder.Run writes them.
type nodeEvents struct {
	recorder *kubeclient.Recorder
	node     *v1.ObjectReference
}

func newNodeEvents(sink kubeclient.EventSink, name string) *nodeEvents {
	return &nodeEvents{recorder: kubeclient.NewRecorder(sink, "nftvs"),
		node: &v1.ObjectReference{APIVersion: "v1", Kind: "Node", Name: name}}
}

// event records an Event on the Node with kube-proxy's action
// (StartKubeProxy); the reporting controller is nftvs (newNodeEvents).
func (e *nodeEvents) event(eventType, reason, note string) {
	e.recorder.Eventf(e.node, nil, eventType, reason, "StartKubeProxy", "%s", eventNote(note))
}

// maxEventNote is the longest note the API server accepts
// (events.k8s.io/v1 validation); a longer Event is dropped whole.
const maxEventNote = 1024

// eventNote cuts a note to maxEventNote bytes, at a rune boundary.
func eventNote(s string) string {
	if len(s) <= maxEventNote {
		return s
	}
	const more = "…"
	s = s[:maxEventNote-len(more)]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + more
}

// serviceWarning is a Warning Event on a Service that nftvs does not
// program as asked (a refused address, an unusable source range, a
// frontend another Service owns, a kernel refusal).
func (e *nodeEvents) serviceWarning(svc types.NamespacedName, reason, note string) {
	ref := &v1.ObjectReference{APIVersion: "v1", Kind: "Service", Namespace: svc.Namespace, Name: svc.Name}
	e.recorder.Eventf(ref, e.node, v1.EventTypeWarning, reason, "SyncProxyRules", "%s", eventNote(note))
}

// hardFail is what a server that cannot serve does with
// --bind-address-hard-fail: an Event, and the run ends. Without it (nil),
// the server retries.
func hardFail(cfg *config.Config, cancel context.CancelCauseFunc, ev *nodeEvents, reason string) func(error) {
	if !cfg.KubeProxy.BindAddressHardFail {
		return nil
	}
	return func(err error) {
		ev.event(v1.EventTypeWarning, reason, err.Error())
		cancel(err)
	}
}

// takeOverKubeProxy runs right before the first sync, which adopts
// kube-proxy's IPVS state. With take (--takeover-kube-proxy, the
// default) it removes kube-proxy IPVS mode's iptables chains and ipsets: a
// failure is reported, and nftvs serves anyway, since stopping would
// leave the node with no proxy at all. Without, it only looks, and names
// what it leaves in a log line and a Warning Event: kube-proxy's
// KUBE-IPVS-FILTER goes on rejecting new Service ports on kube-ipvs0's
// addresses.
func takeOverKubeProxy(take bool, k takeover.Kernel, event func(eventType, reason, note string)) {
	if take {
		if err := takeover.KubeProxy(k); err != nil {
			klog.ErrorS(err, "Taking over from kube-proxy left some of its iptables rules or ipsets in place; serving anyway")
			event(v1.EventTypeWarning, "FailedTakeoverKubeProxy", err.Error())
		}
		return
	}
	left, err := takeover.Find(k)
	if err != nil {
		klog.ErrorS(err, "Looking for kube-proxy's IPVS-mode iptables rules and ipsets")
	}
	if !left.Found() {
		return
	}
	const why = " in place (--takeover-kube-proxy=false): its KUBE-IPVS-FILTER rejects new Service ports on kube-ipvs0's addresses; " +
		"restart nftvs without --takeover-kube-proxy=false, or run nftvs --cleanup, to remove them"
	klog.Warning("kube-proxy's IPVS mode left " + left.String() + why)
	event(v1.EventTypeWarning, "KubeProxyLeftovers", "kube-proxy's IPVS mode left "+left.Summary(3)+why+" (the nftvs log names them all)")
}
