// Package vm is the harness that runs nftvs tests on a real kernel with IPVS
// inside a throwaway qemu VM. It owns the shell scripts in this directory
// and nothing in Go beyond its own smoke test (vm_test.go, build tag
// vmtest):
//
//   - fetch-kernel.sh fetches and unpacks Debian's stock kernel (bullseye,
//     bookworm, trixie) into ${NFTVS_CACHE:-/var/cache/nftvs}, never into
//     the git tree;
//   - build-initramfs.sh builds the busybox initramfs whose /init (init.sh)
//     mounts the host's root read-only over 9p with a tmpfs overlay, loads
//     the IPVS, nf_tables and conntrack modules and runs one command;
//   - vmexec boots the VM for one command and exits with its status, so
//     that `go test -exec $PWD/e2e/vm/vmexec` runs any test binary as root
//     on that kernel.
//
// The harness never changes the host: no modules, no network (the VM has no
// NIC unless NFTVS_VM_APISERVER=1 asks for one restricted forward), no apt
// configuration. See README.md.
package vm
