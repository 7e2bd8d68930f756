package controlplane

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// TestControlPlaneServesHostAndGuest starts etcd + kube-apiserver on the
// host, creates a Service through client-go, and reads it back from inside
// the VM through the restricted forward: the path every end-to-end lane
// with a real API server uses.
func TestControlPlaneServesHostAndGuest(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("E2E TEST SKIPPED: needs root (run `make test` as root); nothing was checked")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cp, err := Start(ctx, Options{Dir: t.TempDir(), Log: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Stop()

	kc, err := cp.Kubeconfig("admin", cp.URL(), cp.AdminToken)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatal(err)
	}
	client := kubernetes.NewForConfigOrDie(cfg)
	svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: "default"},
		Spec: v1.ServiceSpec{Ports: []v1.ServicePort{{Port: 80}}}}
	created, err := client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if created.Spec.ClusterIP == "" || !strings.HasPrefix(created.Spec.ClusterIP, "10.96.") {
		t.Fatalf("ClusterIP %q not allocated from 10.96.0.0/16", created.Spec.ClusterIP)
	}

	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, filepath.Join(root, "e2e/vm/vmexec"), "/usr/bin/curl", "-sSk", "--max-time", "20",
		"-H", "Authorization: Bearer "+cp.AdminToken, GuestServer+"/api/v1/namespaces/default/services/probe")
	cmd.Env = append(os.Environ(), "NFTVS_VM_APISERVER=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("guest could not reach the API server: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), created.Spec.ClusterIP) {
		t.Fatalf("guest read back something else:\n%s", out)
	}
}
