package main

import (
	"os/exec"
	"strings"
	"testing"
)

// nftvs links the three API groups it uses, not client-go's clientset or
// informer factory: those register every API group at start, 8.3 MB of
// resident memory on every node (internal/kubeclient). A new import that
// brings them back fails here, naming the package.
func TestLinksNoClientset(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var groups []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, imports, _ := strings.Cut(line, " ")
		if strings.HasPrefix(pkg, "k8s.io/api/") {
			groups = append(groups, pkg)
		}
		for _, imp := range strings.Fields(imports) {
			if imp == "k8s.io/client-go/kubernetes" || strings.HasPrefix(imp, "k8s.io/client-go/kubernetes/") ||
				imp == "k8s.io/client-go/informers" || strings.HasPrefix(imp, "k8s.io/client-go/informers/") {
				t.Errorf("%s imports %s", pkg, imp)
			}
		}
	}
	if len(groups) != 3 {
		t.Errorf("nftvs links %d API group versions, want core/v1, discovery/v1 and events/v1: %v", len(groups), groups)
	}
}
