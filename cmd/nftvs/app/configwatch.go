package app

import (
	"context"
	"errors"
	"fmt"

	"github.com/fsnotify/fsnotify"
	"k8s.io/klog/v2"
)

// errConfigFileChanged is kube-proxy's error, word for word
// (cmd/kube-proxy/app/options.go, eventHandler), so that what a runbook
// greps for in the log of the exit is the same.
var errConfigFileChanged = errors.New("content of the proxy server's configuration file was updated")

// watchConfigFile ends the run when the --config file is written or
// renamed, as kube-proxy does, so that the DaemonSet restarts nftvs with
// the new settings: stop is called with errConfigFileChanged, or with the
// watcher's error. Other events (chmod, a removal) are ignored, as
// kube-proxy ignores them. A file that cannot be watched is an error
// before anything starts, as in kube-proxy.
func watchConfigFile(ctx context.Context, path string, stop context.CancelCauseFunc) (interface{ Close() error }, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch the configuration file: %w", err)
	}
	if err := w.Add(path); err != nil {
		w.Close()
		return nil, fmt.Errorf("watch the configuration file %s: %w", path, err)
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if ev.Has(fsnotify.Write) || ev.Has(fsnotify.Rename) {
					klog.V(2).InfoS("Configuration file changed", "file", path, "event", ev.Op.String())
					stop(errConfigFileChanged)
					return
				}
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				stop(fmt.Errorf("watch the configuration file %s: %w", path, err))
				return
			}
		}
	}()
	return w, nil
}
