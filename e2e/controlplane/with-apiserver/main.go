// Command with-apiserver runs a program while a throwaway control plane
// (etcd + kube-apiserver with RBAC, e2e/controlplane) runs on the host:
//
//	with-apiserver [-log-dir DIR] PROGRAM [ARGS...]
//
// It is the -exec wrapper of the VM tests that need a real API server
// (go test -exec "with-apiserver e2e/vm/vmexec"). The program gets
// NFTVS_VM_APISERVER=1 (vmexec then gives the guest its one forward to the
// API server), NFTVS_KUBECONFIG (a kubeconfig for the guest, admin token,
// server https://10.0.2.100:6443) and NFTVS_HOST_KUBECONFIG (the same for
// the host, https://127.0.0.1:PORT). Its exit status is the program's.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"github.com/nftvs/nftvs/e2e/controlplane"
)

func main() {
	logDir := flag.String("log-dir", "", "keep etcd and kube-apiserver data and logs here (default: a temporary directory, removed at exit)")
	quiet := flag.Bool("quiet", false, "do not print the control plane's progress")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: with-apiserver [-log-dir DIR] [-quiet] PROGRAM [ARGS...]\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	os.Exit(run(*logDir, *quiet, flag.Args()))
}

func run(logDir string, quiet bool, argv []string) int {
	logf := func(format string, args ...any) {
		if !quiet {
			fmt.Fprintf(os.Stderr, "with-apiserver: "+format+"\n", args...)
		}
	}
	dir := logDir
	if dir == "" {
		d, err := os.MkdirTemp("", "nftvs-apiserver-")
		if err != nil {
			fmt.Fprintf(os.Stderr, "with-apiserver: %v\n", err)
			return 125
		}
		defer os.RemoveAll(d)
		dir = d
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		fmt.Fprintf(os.Stderr, "with-apiserver: %v\n", err)
		return 125
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	start := time.Now()
	cp, err := controlplane.Start(ctx, controlplane.Options{Dir: dir, RBAC: true, Log: logf})
	if err != nil {
		fmt.Fprintf(os.Stderr, "with-apiserver: start the control plane: %v\n", err)
		return 125
	}
	defer cp.Stop()
	logf("kube-apiserver ready on %s in %v", cp.URL(), time.Since(start).Round(time.Millisecond))
	guest, err := cp.Kubeconfig("guest-admin", controlplane.GuestServer, cp.AdminToken)
	if err != nil {
		fmt.Fprintf(os.Stderr, "with-apiserver: %v\n", err)
		return 125
	}
	host, err := cp.Kubeconfig("host-admin", cp.URL(), cp.AdminToken)
	if err != nil {
		fmt.Fprintf(os.Stderr, "with-apiserver: %v\n", err)
		return 125
	}

	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "NFTVS_VM_APISERVER=1", "NFTVS_KUBECONFIG="+guest, "NFTVS_HOST_KUBECONFIG="+host)
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "with-apiserver: %v\n", err)
		return 125
	}
	// Signals go to the program; the control plane stops after it.
	sigs := make(chan os.Signal, 1)
	// SIGQUIT is how go test ends a test that ran too long: without it
	// here, this process would die without stopping the control plane.
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT, syscall.SIGHUP)
	go func() {
		for s := range sigs {
			_ = cmd.Process.Signal(s)
		}
	}()
	err = cmd.Wait()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit) && exit.ExitCode() >= 0:
		return exit.ExitCode()
	default:
		fmt.Fprintf(os.Stderr, "with-apiserver: %s: %v\n", argv[0], err)
		return 125
	}
}
