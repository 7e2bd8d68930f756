//go:build vmtest

package proxier_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nftvs/nftvs/explain"
	"github.com/nftvs/nftvs/proxier"
)

// TestExplain runs `nftvs explain` (its code, in this process) against a
// node the proxier programmed for real, with a live connection: the
// proxier's view comes over the explain socket, the rest from the VM's
// kernel.
func TestExplain(t *testing.T) {
	requireVM(t)
	tb := newTestbed(t)
	cl := tb.addPod(t, "cl", nodeName, "10.244.1.99", "fd00:244:1::99")
	a1 := tb.addPod(t, "a1", nodeName, "10.244.1.11", "fd00:244:1::11")
	a3 := tb.addPod(t, "a3", nodeName, "10.244.1.13", "fd00:244:1::13")
	b1 := tb.addPod(t, "b1", remoteNode, "10.244.2.21", "fd00:244:2::21")
	const echoPort = 9090
	echoServer(t, a1.ns, a1.name, echoPort)
	echoServer(t, b1.ns, b1.name, echoPort)
	c := startCluster(t, tb)

	sock := filepath.Join(t.TempDir(), "explain.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := explain.Serve(ctx, sock, explain.Handler(c.p)); err != nil {
		t.Fatal(err)
	}

	svc := service("explained", "10.96.9.10", loadBalancer(30090), etpLocal(30091), externalIPs("127.0.0.1"),
		annotate(proxier.AnnotationScheduler, "wlc"))
	c.apply(t, svc, echoSlice4(svc, echoPort, readyEP(a1), readyEP(b1), notReadyEP(a3)))
	key := tcpKey("10.96.9.10", 80)
	at := func(p *pod) rs { return rs{netip.AddrPortFrom(p.v4, echoPort): 1} }
	c.waitIPVS(t, key, at(a1).with(at(b1)))

	conn, err := cl.ns.dialEcho(ap("10.96.9.10", 80))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.c.Close()
	who, err := conn.roundTrip("hello")
	if err != nil {
		t.Fatal(err)
	}
	held := map[string]*pod{a1.name: a1, b1.name: b1}[who]

	kernel := func() (explain.Kernel, error) {
		k, err := explain.NewNodeKernel()
		if err != nil {
			return nil, err
		}
		t.Cleanup(k.Close)
		return k, nil
	}
	runExplain := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		if err := explain.Run(context.Background(), append([]string{"--socket", sock}, args...), &out, kernel); err != nil {
			t.Fatalf("explain %v: %v\n%s", args, err, out.String())
		}
		return out.String()
	}
	text := runExplain("e2e/explained")
	t.Logf("nftvs explain e2e/explained:\n%s", text)
	flat := strings.Join(strings.Fields(text), " ")
	for _, want := range []string{
		"Service e2e/explained on node node-a",
		"RefusedAddress e2e/explained: externalIPs: 127.0.0.1 is a loopback address",
		"TCP 10.96.9.10:80 wlc in IPVS: wlc",
		"-> " + netip.AddrPortFrom(held.v4, echoPort).String() + " weight 1 kernel weight 1, 1 active",
		"TCP " + tb.ext0IP4.String() + ":30090 wlc in IPVS: wlc",
		"kube-ipvs0: 10.96.9.10",
		`cluster-ips 10.96.9.10 . tcp . 80 in kernel, comment "e2e/explained:http/tcp"`,
		`node-ports-local tcp . 30090 in kernel`,
		"health check node port 30091: 1 local endpoints; answers",
		a3.v4.String() + " node node-a carried by 0 virtual servers, draining on 0 not ready",
		b1.v4.String() + " node node-b ready,serving carried by",
		"internal traffic only",
		"10.96.9.10:80 reply from " + netip.AddrPortFrom(held.v4, echoPort).String(),
	} {
		if !strings.Contains(flat, strings.Join(strings.Fields(want), " ")) {
			t.Errorf("explain lacks %q", want)
		}
	}

	var s explain.Service
	if err := json.Unmarshal([]byte(runExplain("-o", "json", "e2e/explained")), &s); err != nil {
		t.Fatal(err)
	}
	if len(s.KernelErrors) > 0 {
		t.Errorf("kernel reads failed: %v", s.KernelErrors)
	}
	found := false
	for _, vs := range s.Ports[0].VirtualServers {
		if vs.Kernel == nil || !vs.Kernel.Present {
			t.Errorf("%s not read from IPVS: %+v", vs.Frontend, vs.Kernel)
			continue
		}
		for _, r := range vs.Kernel.RealServers {
			found = found || (vs.Key == key && r.Active == 1)
		}
	}
	if !found {
		t.Error("the held connection is not counted as active in the JSON")
	}

	if text := runExplain("10.96.9.10:80"); !strings.HasPrefix(text, "TCP  10.96.9.10:80 is e2e/explained:http") {
		t.Errorf("by address:\n%s", text)
	}
	// What nftvs refused is nobody's frontend.
	if text := runExplain("127.0.0.1:80"); !strings.Contains(text, "no Service's virtual server") {
		t.Errorf("the refused external IP:\n%s", text)
	}
}
