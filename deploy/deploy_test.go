package deploy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	v1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/nftvs/nftvs/config"
	"github.com/nftvs/nftvs/e2e/controlplane"
)

// kustomization is the part of kustomization.yaml the tests follow.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace"`
	Resources  []string `json:"resources"`
}

// manifest is one object of one file.
type manifest struct {
	file string
	obj  runtime.Object
}

// readManifests decodes every resource kustomization.yaml lists, strictly:
// an unknown or duplicate field (a typo the API server would silently drop
// without strict field validation) fails.
func readManifests(t *testing.T) (kustomization, []manifest) {
	t.Helper()
	b, err := os.ReadFile("kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	if k.Namespace != "kube-system" || len(k.Resources) == 0 {
		t.Fatalf("kustomization.yaml: namespace %q, resources %v", k.Namespace, k.Resources)
	}
	dec := json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme.Scheme, scheme.Scheme, json.SerializerOptions{Yaml: true, Strict: true})
	var out []manifest
	for _, f := range k.Resources {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		r := utilyaml.NewYAMLReader(bufioReader(data))
		for {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if len(bytes.TrimSpace(stripComments(doc))) == 0 {
				continue
			}
			obj, _, err := dec.Decode(doc, nil, nil)
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			out = append(out, manifest{file: f, obj: obj})
		}
	}
	return k, out
}

func stripComments(doc []byte) []byte {
	var out [][]byte
	for _, l := range bytes.Split(doc, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(l), []byte("#")) {
			out = append(out, l)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

func find[T runtime.Object](t *testing.T, ms []manifest, file string) T {
	t.Helper()
	for _, m := range ms {
		if o, ok := m.obj.(T); ok && m.file == file {
			return o
		}
	}
	var zero T
	t.Fatalf("%s: no %T", file, zero)
	return zero
}

// The names another engineer's VM test and the README rely on, and the
// DaemonSet's shape (kube-proxy's, without xtables.lock).
func TestManifests(t *testing.T) {
	_, ms := readManifests(t)
	sa := find[*v1.ServiceAccount](t, ms, "serviceaccount.yaml")
	role := find[*rbacv1.ClusterRole](t, ms, "clusterrole.yaml")
	binding := find[*rbacv1.ClusterRoleBinding](t, ms, "clusterrolebinding.yaml")
	cm := find[*v1.ConfigMap](t, ms, "configmap.yaml")
	ds := find[*appsv1.DaemonSet](t, ms, "daemonset.yaml")

	if sa.Namespace != "kube-system" || sa.Name != "nftvs" || role.Name != "nftvs" || binding.Name != "nftvs" || cm.Name != "nftvs" || ds.Name != "nftvs" {
		t.Errorf("names: sa %s/%s role %s binding %s cm %s ds %s", sa.Namespace, sa.Name, role.Name, binding.Name, cm.Name, ds.Name)
	}
	if binding.RoleRef.Name != role.Name || binding.RoleRef.Kind != "ClusterRole" || len(binding.Subjects) != 1 ||
		binding.Subjects[0] != (rbacv1.Subject{Kind: "ServiceAccount", Name: sa.Name, Namespace: sa.Namespace}) {
		t.Errorf("binding %+v does not bind ClusterRole %s to %s/%s", binding, role.Name, sa.Namespace, sa.Name)
	}

	// Exactly what nftvs calls: a new permission must be a decision.
	var rules []string
	for _, r := range role.Rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					rules = append(rules, g+"/"+res+":"+v)
				}
			}
		}
		if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
			t.Errorf("unexpected rule %+v", r)
		}
	}
	slices.Sort(rules)
	want := []string{"/nodes:list", "/nodes:watch", "/services:list", "/services:watch",
		"discovery.k8s.io/endpointslices:list", "discovery.k8s.io/endpointslices:watch",
		"events.k8s.io/events:create", "events.k8s.io/events:patch"}
	if !slices.Equal(rules, want) {
		t.Errorf("ClusterRole rules\n got %v\nwant %v", rules, want)
	}

	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || spec.PriorityClassName != "system-node-critical" || spec.ServiceAccountName != sa.Name {
		t.Errorf("pod spec: hostNetwork %v priorityClassName %q serviceAccountName %q", spec.HostNetwork, spec.PriorityClassName, spec.ServiceAccountName)
	}
	if spec.DNSPolicy == v1.DNSClusterFirstWithHostNet {
		t.Error("dnsPolicy ClusterFirstWithHostNet: cluster DNS is unreachable until nftvs has synced")
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0] != (v1.Toleration{Operator: v1.TolerationOpExists}) {
		t.Errorf("tolerations %+v, want one operator: Exists", spec.Tolerations)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers", len(spec.Containers))
	}
	c := spec.Containers[0]
	if !slices.Equal(c.Command, []string{"/usr/local/bin/nftvs", "--config=/var/lib/kube-proxy/config.conf", "--hostname-override=$(NODE_NAME)"}) {
		t.Errorf("command %q", c.Command)
	}
	if len(c.Env) != 1 || c.Env[0].Name != "NODE_NAME" || c.Env[0].ValueFrom == nil || c.Env[0].ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("env %+v, want NODE_NAME from spec.nodeName", c.Env)
	}
	probe := func(name string, p *v1.Probe, path string) {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != path || p.HTTPGet.Port.IntValue() != 10256 {
			t.Errorf("%s probe %+v, want GET %s on 10256", name, p, path)
		}
	}
	probe("startup", c.StartupProbe, "/livez")
	probe("liveness", c.LivenessProbe, "/livez")
	// A node so loaded that a process start takes minutes must not kill
	// nftvs before it listens: the startup probe waits 5 min.
	if p := c.StartupProbe; p != nil && p.PeriodSeconds*p.FailureThreshold < 300 {
		t.Errorf("startup probe gives %d s, want at least 5 min", p.PeriodSeconds*p.FailureThreshold)
	}
	// A slow proxy is not a dead one (issue 30): liveness kills only after
	// at least 5 min of failures, each allowed 10 s, where the probes of
	// 2 and 5 December killed after 1 min of 5 s timeouts.
	if p := c.LivenessProbe; p != nil && (p.PeriodSeconds*(p.FailureThreshold-1) < 270 || p.TimeoutSeconds < 10) {
		t.Errorf("liveness probe kills after %d s of failures, %d s timeout; want at least 270 s (10 probes 30 s apart) and 10 s",
			p.PeriodSeconds*(p.FailureThreshold-1), p.TimeoutSeconds)
	}
	probe("readiness", c.ReadinessProbe, "/healthz")
	if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
		t.Errorf("securityContext %+v, want privileged", c.SecurityContext)
	}
	mounts := map[string]v1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
	}
	volumes := map[string]v1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
		if v.HostPath != nil && strings.Contains(v.HostPath.Path, "xtables") {
			t.Errorf("volume %s mounts %s: nftvs never runs iptables", v.Name, v.HostPath.Path)
		}
	}
	if m, ok := mounts["/lib/modules"]; !ok || !m.ReadOnly || volumes[m.Name].HostPath == nil || volumes[m.Name].HostPath.Path != "/lib/modules" {
		t.Errorf("/lib/modules: mount %+v, volume %+v; want the host's, read-only", m, volumes[m.Name])
	}
	if _, ok := mounts["/run/xtables.lock"]; ok {
		t.Error("/run/xtables.lock is mounted")
	}
	m, ok := mounts["/var/lib/kube-proxy"]
	if !ok || volumes[m.Name].ConfigMap == nil || volumes[m.Name].ConfigMap.Name != cm.Name {
		t.Errorf("/var/lib/kube-proxy: mount %+v, volume %+v; want ConfigMap %s", m, volumes[m.Name], cm.Name)
	}
	for _, key := range []string{"config.conf", "kubeconfig.conf"} {
		if cm.Data[key] == "" {
			t.Errorf("ConfigMap has no %s", key)
		}
	}
}

// The ConfigMap's config.conf goes through nftvs's own loader and flag
// handling exactly as the DaemonSet's command line passes it: no error,
// no warning, IPVS mode; its kubeconfig is where it says and uses the
// ServiceAccount's token.
func TestConfigMapLoads(t *testing.T) {
	_, ms := readManifests(t)
	cm := find[*v1.ConfigMap](t, ms, "configmap.yaml")
	dir := t.TempDir() // stands for /var/lib/kube-proxy
	for k, v := range cm.Data {
		if err := os.WriteFile(filepath.Join(dir, k), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	conf := filepath.Join(dir, "config.conf")
	cfg, raw, warnings, err := config.LoadConfigFile(conf)
	if err != nil || len(warnings) > 0 {
		t.Fatalf("LoadConfigFile: err %v, warnings %q", err, warnings)
	}
	if raw.Mode != "ipvs" || cfg.IPVS.Scheduler != "rr" || cfg.HealthzBindAddress != "0.0.0.0:10256" {
		t.Errorf("mode %q scheduler %q healthz %q", raw.Mode, cfg.IPVS.Scheduler, cfg.HealthzBindAddress)
	}

	o := config.NewOptions()
	if err := o.NewFlagSet().Parse([]string{"--config=" + conf, "--hostname-override=Node-1"}); err != nil {
		t.Fatal(err)
	}
	full, err := o.Complete()
	if err != nil {
		t.Fatalf("Complete: %v", err)
	}
	if len(full.Warnings) > 0 {
		t.Errorf("warnings: %q", full.Warnings)
	}
	if full.KubeProxy.HostnameOverride != "node-1" {
		t.Errorf("hostnameOverride %q", full.KubeProxy.HostnameOverride)
	}

	const mountPath = "/var/lib/kube-proxy/"
	kc := cfg.ClientConnection.Kubeconfig
	if !strings.HasPrefix(kc, mountPath) {
		t.Fatalf("clientConnection.kubeconfig %q is not in the ConfigMap's mount %s", kc, mountPath)
	}
	k, err := clientcmd.LoadFromFile(filepath.Join(dir, strings.TrimPrefix(kc, mountPath)))
	if err != nil {
		t.Fatal(err)
	}
	ctx := k.Contexts[k.CurrentContext]
	if ctx == nil || k.AuthInfos[ctx.AuthInfo] == nil || k.Clusters[ctx.Cluster] == nil {
		t.Fatalf("kubeconfig.conf: current context %q incomplete", k.CurrentContext)
	}
	if got := k.AuthInfos[ctx.AuthInfo].TokenFile; got != "/var/run/secrets/kubernetes.io/serviceaccount/token" {
		t.Errorf("kubeconfig.conf tokenFile %q, want the ServiceAccount token", got)
	}
}

// Every manifest, as kustomization.yaml lists it and with its namespace,
// is created on a real kube-apiserver with strict field validation; then
// the ServiceAccount's own token can do what nftvs does and no more.
func TestApplyToAPIServer(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("E2E TEST SKIPPED: needs root to run etcd + kube-apiserver (run as root); the manifests were NOT applied to an API server")
	}
	// A port of its own unless told (NFTVS_APISERVER_PORT): `go test ./...`
	// runs other packages' control planes at the same time.
	if os.Getenv("NFTVS_APISERVER_PORT") == "" {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Setenv("NFTVS_APISERVER_PORT", strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
		l.Close()
	}
	k, ms := readManifests(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cp, err := controlplane.Start(ctx, controlplane.Options{Dir: t.TempDir(), RBAC: true, Log: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Stop()
	kcPath, err := cp.Kubeconfig("admin", cp.URL(), cp.AdminToken)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kcPath)
	if err != nil {
		t.Fatal(err)
	}
	client := kubernetes.NewForConfigOrDie(rc)
	dyn := dynamic.NewForConfigOrDie(rc)
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(client.Discovery()))

	for _, m := range ms {
		u := &unstructured.Unstructured{}
		var err error
		u.Object, err = runtime.DefaultUnstructuredConverter.ToUnstructured(m.obj)
		if err != nil {
			t.Fatal(err)
		}
		gvk := m.obj.GetObjectKind().GroupVersionKind()
		mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("%s: %s: %v", m.file, gvk, err)
		}
		// What kustomize's namespace: does.
		var ri dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
		if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
			u.SetNamespace(k.Namespace)
			ri = dyn.Resource(mapping.Resource).Namespace(k.Namespace)
		}
		if subjects, ok, _ := unstructured.NestedSlice(u.Object, "subjects"); ok {
			for _, s := range subjects {
				if s := s.(map[string]any); s["kind"] == "ServiceAccount" {
					s["namespace"] = k.Namespace
				}
			}
			if err := unstructured.SetNestedSlice(u.Object, subjects, "subjects"); err != nil {
				t.Fatal(err)
			}
		}
		// kube-system is created by the API server shortly after it is
		// ready: retry while it is missing.
		deadline := time.Now().Add(30 * time.Second)
		for {
			_, err = ri.Create(ctx, u, metav1.CreateOptions{FieldValidation: metav1.FieldValidationStrict})
			if err == nil || !apierrors.IsNotFound(err) || time.Now().After(deadline) {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("%s: create %s %s: %v", m.file, gvk.Kind, u.GetName(), err)
		}
		t.Logf("created %s %s/%s from %s", gvk.Kind, u.GetNamespace(), u.GetName(), m.file)
	}

	// The API server defaulted and stored the DaemonSet as written.
	ds, err := client.AppsV1().DaemonSets(k.Namespace).Get(ctx, "nftvs", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c := ds.Spec.Template.Spec.Containers[0]; c.LivenessProbe.HTTPGet.Path != "/livez" || !*c.SecurityContext.Privileged {
		t.Errorf("stored DaemonSet container %+v", c)
	}

	// The ServiceAccount's token, as the kubelet would mount it.
	tr, err := client.CoreV1().ServiceAccounts(k.Namespace).CreateToken(ctx, "nftvs", &authnv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sa := kubernetes.NewForConfigOrDie(&rest.Config{Host: rc.Host, BearerToken: tr.Status.Token, TLSClientConfig: rest.TLSClientConfig{Insecure: true}})
	if _, err := sa.CoreV1().Services("").List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("list services as the ServiceAccount: %v", err)
	}
	if _, err := sa.CoreV1().Nodes().List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=node-1"}); err != nil {
		t.Errorf("list this node as the ServiceAccount: %v", err)
	}
	if _, err := sa.CoreV1().Secrets(k.Namespace).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list secrets as the ServiceAccount: err %v, want forbidden", err)
	}

	user := "system:serviceaccount:" + k.Namespace + ":nftvs"
	for _, c := range []struct {
		group, resource, verb string
		allowed               bool
	}{
		{"", "services", "list", true}, {"", "services", "watch", true},
		{"discovery.k8s.io", "endpointslices", "list", true}, {"discovery.k8s.io", "endpointslices", "watch", true},
		{"", "nodes", "list", true}, {"", "nodes", "watch", true},
		{"events.k8s.io", "events", "create", true}, {"events.k8s.io", "events", "patch", true},
		{"", "nodes", "get", false}, {"", "nodes", "patch", false}, {"", "services", "update", false},
		{"", "endpoints", "list", false}, {"", "events", "create", false}, {"events.k8s.io", "events", "delete", false},
		{"", "pods", "list", false}, {"", "secrets", "get", false}, {"", "configmaps", "list", false},
	} {
		sar, err := client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
			User:               user,
			Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:" + k.Namespace, "system:authenticated"},
			ResourceAttributes: &authzv1.ResourceAttributes{Namespace: "default", Group: c.group, Resource: c.resource, Verb: c.verb},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sar.Status.Allowed != c.allowed {
			t.Errorf("%s %s.%s: allowed %v, want %v (%s)", c.verb, c.resource, c.group, sar.Status.Allowed, c.allowed, sar.Status.Reason)
		}
	}
}

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }
