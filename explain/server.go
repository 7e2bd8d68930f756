package explain

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
)

// DefaultSocket is where nftvs serves its view for `nftvs explain`.
const DefaultSocket = "/run/nftvs-explain.sock"

// Frontend is the answer to "whose is this address:port?".
type Frontend struct {
	Frontend    string `json:"frontend"`
	Service     string `json:"service,omitempty"`
	ServicePort string `json:"servicePort,omitempty"`
}

// Handler serves src's view:
//
//	GET /v1/services/{namespace}/{name}        Service (the proxier's side)
//	GET /v1/frontends/{protocol}/{address:port} Frontend
func Handler(src Source) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/services/{namespace}/{name}", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, Build(src, types.NamespacedName{Namespace: r.PathValue("namespace"), Name: r.PathValue("name")}))
	})
	mux.HandleFunc("GET /v1/frontends/{protocol}/{addrport}", func(w http.ResponseWriter, r *http.Request) {
		_, k, err := ParseTarget(r.PathValue("addrport") + "/" + r.PathValue("protocol"))
		if err != nil || k.FWMark != 0 {
			http.Error(w, fmt.Sprintf("bad frontend: %v", err), http.StatusBadRequest)
			return
		}
		f := Frontend{Frontend: k.String()}
		if n, ok := src.VirtualServerOwner(k); ok {
			f.Service, f.ServicePort = n.Namespace+"/"+n.Name, n.String()
		}
		writeJSON(w, f)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		klog.V(2).InfoS("Writing an explain answer", "err", err)
	}
}

// Serve serves h on the unix socket path until ctx ends. The socket is
// the only way in: no TCP port, and mode 0600 (a missing directory is
// made 0700), so only root in nftvs's pod (kubectl exec) reads the view.
// The default sits directly in /run: not in a directory of its own,
// which a mount there (a 9p share in the test VM) could make a file
// system without sockets. A socket left
// by a previous run is replaced.
func Serve(ctx context.Context, path string, h http.Handler) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("explain socket directory: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove old explain socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("explain socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("explain socket: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
		_ = os.Remove(path)
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			klog.ErrorS(err, "Explain socket stopped serving", "path", path)
		}
	}()
	return nil
}
