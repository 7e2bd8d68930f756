// Package controlplane starts a real, throwaway Kubernetes control plane on
// the host for end-to-end tests: Debian's etcd and upstream kube-apiserver
// (built by e2e/tools/build.sh), on loopback only. The VM reaches it at
// https://10.0.2.100:6443 through qemu's single restricted forward
// (NFTVS_VM_APISERVER=1, see e2e/vm), which is why the API server listens
// on 127.0.0.1:6443 (or NFTVS_APISERVER_PORT, which vmexec follows).
package controlplane

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// DefaultAPIPort is where the API server listens on the host unless
// NFTVS_APISERVER_PORT says otherwise (so that two developers' runs on
// one machine do not collide); the VM's forward (e2e/vm/vmexec) reads the
// same variable.
const DefaultAPIPort = 6443

// APIPort is the host port of the API server: NFTVS_APISERVER_PORT or
// DefaultAPIPort.
func APIPort() int {
	if p, err := strconv.Atoi(os.Getenv("NFTVS_APISERVER_PORT")); err == nil && p > 0 && p < 65536 {
		return p
	}
	return DefaultAPIPort
}

// GuestServer is the API server's address as the VM sees it.
const GuestServer = "https://10.0.2.100:6443"

// Options shape the control plane.
type Options struct {
	// BinDir holds kube-apiserver (default: what e2e/tools/build.sh prints).
	BinDir string
	// Dir holds data, keys and logs (default: a new temp dir).
	Dir string
	// ServiceCIDR is --service-cluster-ip-range (default 10.96.0.0/16).
	ServiceCIDR string
	// RBAC turns on --authorization-mode=Node,RBAC; otherwise AlwaysAllow.
	RBAC bool
	// Users are extra token users: name → token (group system:authenticated).
	Users map[string]string
	// Log receives progress lines (nil: silent).
	Log func(format string, args ...any)
}

// ControlPlane is a running etcd + kube-apiserver.
type ControlPlane struct {
	Dir        string
	AdminToken string
	etcd, api  *exec.Cmd
	exited     chan error
}

// Start starts etcd and kube-apiserver and waits until the API server is
// ready (about 2 s once built). Stop it with Stop.
func Start(ctx context.Context, o Options) (*ControlPlane, error) {
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	}
	if o.ServiceCIDR == "" {
		o.ServiceCIDR = "10.96.0.0/16"
	}
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "nftvs-controlplane-")
		if err != nil {
			return nil, err
		}
		o.Dir = d
	}
	if o.BinDir == "" {
		d, err := BuildTools(ctx)
		if err != nil {
			return nil, err
		}
		o.BinDir = d
	}
	if err := portFree(APIPort()); err != nil {
		return nil, err
	}
	cp := &ControlPlane{Dir: o.Dir, AdminToken: randomToken(), exited: make(chan error, 2)}

	// Keys for service account tokens.
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	keyFile := filepath.Join(o.Dir, "sa.key")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		return nil, err
	}
	tokens := []string{fmt.Sprintf("%s,admin,admin,system:masters", cp.AdminToken)}
	for user, tok := range o.Users {
		tokens = append(tokens, fmt.Sprintf("%s,%s,%s,system:authenticated", tok, user, user))
	}
	tokenFile := filepath.Join(o.Dir, "tokens.csv")
	if err := os.WriteFile(tokenFile, []byte(strings.Join(tokens, "\n")+"\n"), 0o600); err != nil {
		return nil, err
	}

	etcdPort, err := freePort()
	if err != nil {
		return nil, err
	}
	peerPort, err := freePort()
	if err != nil {
		return nil, err
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdPort)
	cp.etcd, err = cp.start(o, "etcd", "etcd",
		"--data-dir", filepath.Join(o.Dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", "http://127.0.0.1:"+strconv.Itoa(peerPort),
		"--initial-advertise-peer-urls", "http://127.0.0.1:"+strconv.Itoa(peerPort),
		"--initial-cluster", "default=http://127.0.0.1:"+strconv.Itoa(peerPort))
	if err != nil {
		return nil, err
	}
	authz := "AlwaysAllow"
	if o.RBAC {
		authz = "Node,RBAC"
	}
	cp.api, err = cp.start(o, "kube-apiserver", filepath.Join(o.BinDir, "kube-apiserver"),
		"--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(APIPort()),
		"--cert-dir", filepath.Join(o.Dir, "certs"),
		"--token-auth-file", tokenFile,
		"--service-account-key-file", keyFile, "--service-account-signing-key-file", keyFile,
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-cluster-ip-range", o.ServiceCIDR,
		"--authorization-mode", authz, "--allow-privileged=true",
		// Scale tests create objects fast.
		"--max-requests-inflight", "2000", "--max-mutating-requests-inflight", "1000")
	if err != nil {
		cp.Stop()
		return nil, err
	}
	o.Log("waiting for kube-apiserver on 127.0.0.1:%d", APIPort())
	if err := cp.waitReady(ctx, 90*time.Second); err != nil {
		cp.Stop()
		return nil, fmt.Errorf("%w\n%s", err, tail(filepath.Join(o.Dir, "kube-apiserver.log"), 30))
	}
	return cp, nil
}

func (cp *ControlPlane) start(o Options, name, bin string, args ...string) (*exec.Cmd, error) {
	log, err := os.Create(filepath.Join(o.Dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	o.Log("started %s (pid %d), log %s", name, cmd.Process.Pid, log.Name())
	go func() {
		err := cmd.Wait()
		log.Close()
		cp.exited <- fmt.Errorf("%s exited: %v", name, err)
	}()
	return cmd, nil
}

func (cp *ControlPlane) waitReady(ctx context.Context, timeout time.Duration) error {
	client := cp.HTTPClient()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case err := <-cp.exited:
			return err
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, cp.URL()+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+cp.AdminToken)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return errors.New("kube-apiserver not ready in time")
}

// URL is the API server's address on the host.
func (cp *ControlPlane) URL() string { return fmt.Sprintf("https://127.0.0.1:%d", APIPort()) }

// HTTPClient talks to the API server (its certificate is self-signed).
func (cp *ControlPlane) HTTPClient() *http.Client {
	return &http.Client{Timeout: 5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
}

// Kubeconfig writes a kubeconfig for server with token, returning its path.
func (cp *ControlPlane) Kubeconfig(name, server, token string) (string, error) {
	path := filepath.Join(cp.Dir, name+".kubeconfig")
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: %s
    insecure-skip-tls-verify: true
users:
- name: %s
  user:
    token: %s
contexts:
- name: e2e
  context: {cluster: e2e, user: %s}
current-context: e2e
`, server, name, token, name)
	return path, os.WriteFile(path, []byte(cfg), 0o600)
}

// Stop kills the API server and etcd and removes nothing (logs stay in Dir).
func (cp *ControlPlane) Stop() {
	for _, c := range []*exec.Cmd{cp.api, cp.etcd} {
		if c != nil && c.Process != nil {
			_ = c.Process.Kill()
		}
	}
}

// BuildTools builds (or finds, when cached) the upstream binaries and
// returns their directory.
func BuildTools(ctx context.Context) (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(root, "e2e/tools/build.sh"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("e2e/tools/build.sh: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "e2e/tools/build.sh")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("repository root (e2e/tools/build.sh) not found")
		}
		dir = parent
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func portFree(port int) error {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return fmt.Errorf("port %d is taken (another control plane running?): %w", port, err)
	}
	return l.Close()
}

func randomToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
