package app

import (
	"bytes"
	"context"
	"flag"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2"

	"github.com/nftvs/nftvs/internal/kubeclient/clientset"
)

// The start-up lines runbooks grep for in kube-proxy's log are there,
// with nftvs's version; "Starting nftvs" says which program it is.
// Before, only "Starting nftvs" was.
func TestStartupLogLines(t *testing.T) {
	var buf bytes.Buffer
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	_ = fs.Set("logtostderr", "false")
	_ = fs.Set("alsologtostderr", "false")
	klog.SetOutput(&buf)
	defer func() {
		_ = fs.Set("logtostderr", "true")
		klog.SetOutput(nil)
	}()
	logStartup(mustParse(t))
	klog.Flush()
	for _, want := range []string{`"Starting nftvs" version=`, `"Version info" version=`, `"Golang settings" GOGC=`, `"Using ipvs Proxier"`} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("no %s line in:\n%s", want, buf.String())
		}
	}
}

// The Starting Event is kube-proxy's (reason Starting, action
// StartKubeProxy, no note) from the reporting controller nftvs. Before,
// its action was StartNftvs and its note "Starting nftvs".
func TestStartingEvent(t *testing.T) {
	client := fake.NewClientset()
	ev := newNodeEvents(clientset.New(client), "node-a")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go ev.recorder.Run(ctx)
	ev.event(v1.EventTypeNormal, "Starting", "")
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		list, err := client.EventsV1().Events("").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) == 0 {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		e := list.Items[0]
		if e.Reason != "Starting" || e.Action != "StartKubeProxy" || e.Note != "" || e.ReportingController != "nftvs" ||
			e.Regarding.Kind != "Node" || e.Regarding.Name != "node-a" || e.Type != v1.EventTypeNormal {
			t.Errorf("Starting Event: reason %q action %q note %q controller %q regarding %s/%s type %s; want Starting, StartKubeProxy, \"\", nftvs, Node/node-a, Normal",
				e.Reason, e.Action, e.Note, e.ReportingController, e.Regarding.Kind, e.Regarding.Name, e.Type)
		}
		return
	}
	t.Fatal("no Event recorded")
}
