package app

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A write to the --config file ends the run with kube-proxy's error, as
// kube-proxy exits then, so that the DaemonSet restarts it with the new
// settings; a chmod does not. Before, nftvs ignored the change.
func TestConfigFileChangeEndsTheRun(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte("kind: KubeProxyConfiguration\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancelCause(context.Background())
	defer stop(nil)
	w, err := watchConfigFile(ctx, path, stop)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
		t.Fatalf("a chmod ended the run: %v", context.Cause(ctx))
	case <-time.After(300 * time.Millisecond):
	}

	if err := os.WriteFile(path, []byte("kind: KubeProxyConfiguration\nmode: ipvs\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the run goes on after the configuration file was written")
	}
	if err := context.Cause(ctx); !errors.Is(err, errConfigFileChanged) ||
		err.Error() != "content of the proxy server's configuration file was updated" {
		t.Errorf("cause %v, want kube-proxy's error", err)
	}
}

// A file that cannot be watched stops nftvs before anything starts, as in
// kube-proxy.
func TestConfigFileWatchFails(t *testing.T) {
	ctx, stop := context.WithCancelCause(context.Background())
	defer stop(nil)
	if _, err := watchConfigFile(ctx, filepath.Join(t.TempDir(), "missing.yaml"), stop); err == nil {
		t.Error("watching a missing file: no error")
	}
}

// The run's own context is a child of the one the watcher ends: its
// outcome is the watcher's error, so that nftvs exits 1 as kube-proxy
// does, not a clean stop.
func TestConfigFileChangeIsTheRunsError(t *testing.T) {
	parent, stop := context.WithCancelCause(context.Background())
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	stop(errConfigFileChanged)
	if err := stopped(ctx); !errors.Is(err, errConfigFileChanged) {
		t.Errorf("stopped: %v, want the configuration file's error", err)
	}
}
