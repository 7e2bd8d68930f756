package ipvs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Sysctl reads and writes kernel parameters as files under Root
// (/proc/sys on a node; a temporary directory in tests). Names are
// slash-separated paths below Root: "net/ipv4/vs/conntrack". /proc/sys/net
// is per network namespace: it shows the namespace of the thread that
// opens the file.
type Sysctl struct {
	Root string
}

// ProcSys is the node's sysctl tree.
var ProcSys = Sysctl{Root: "/proc/sys"}

// Get reads an integer parameter.
func (s Sysctl) Get(name string) (int, error) {
	b, err := os.ReadFile(filepath.Join(s.Root, name))
	if err != nil {
		return 0, fmt.Errorf("read sysctl %s: %w", name, err)
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("read sysctl %s: %w", name, err)
	}
	return v, nil
}

// Set writes an integer parameter, unless it already has that value: a
// read-only /proc/sys (an unprivileged container) is then no error.
func (s Sysctl) Set(name string, value int) error {
	if cur, err := s.Get(name); err == nil && cur == value {
		return nil
	}
	path := filepath.Join(s.Root, name)
	// No O_CREATE: a missing file means a missing kernel feature (ip_vs
	// not loaded, IPv6 disabled), which must not turn into a new file.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("set sysctl %s=%d: %s does not exist (is the kernel module loaded?): %w", name, value, path, err)
		}
		return fmt.Errorf("set sysctl %s=%d: %w", name, value, err)
	}
	_, err = f.WriteString(strconv.Itoa(value))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("set sysctl %s=%d: %w", name, value, err)
	}
	return nil
}

// SysctlOptions say which of IPVS mode's sysctls apply on this node.
type SysctlOptions struct {
	// StrictARP stops the node from answering ARP for kube-ipvs0's
	// addresses on other interfaces (arp_ignore=1, arp_announce=2), which
	// MetalLB-style load balancers need.
	StrictARP bool
	// KernelRelease is the running kernel's release (uname -r); empty
	// reads it.
	KernelRelease string
}

// Sysctl names IPVS mode sets.
const (
	SysctlVSConntrack               = "net/ipv4/vs/conntrack"
	SysctlVSExpireNodestConn        = "net/ipv4/vs/expire_nodest_conn"
	SysctlVSExpireQuiescentTemplate = "net/ipv4/vs/expire_quiescent_template"
	SysctlVSConnReuseMode           = "net/ipv4/vs/conn_reuse_mode"
	SysctlIPv4Forward               = "net/ipv4/ip_forward"
	SysctlIPv6Forward               = "net/ipv6/conf/all/forwarding"
	SysctlARPIgnore                 = "net/ipv4/conf/all/arp_ignore"
	SysctlARPAnnounce               = "net/ipv4/conf/all/arp_announce"
)

// SysctlSetting is one parameter and its value.
type SysctlSetting struct {
	Name  string
	Value int
}

// Sysctls lists what upstream kube-proxy's IPVS mode sets, and why:
//   - vs/conntrack=1: IPVS-forwarded flows get conntrack entries, without
//     which the nftables masquerade never sees them;
//   - vs/expire_nodest_conn=1: connections to a deleted real server are
//     dropped (and flushed, since 5.9) instead of black-holed;
//   - vs/expire_quiescent_template=1: persistence templates of a weight-0
//     real server expire, so sticky clients move on;
//   - ip_forward: real servers are reached through the node. IPv6
//     forwarding (net/ipv6/conf/all/forwarding) is not set, as kube-proxy
//     1.36 sets it in no mode: turning it on stops a SLAAC node from
//     accepting Router Advertisements, and so can cut it off (the
//     command checks it and warns instead);
//   - vs/conn_reuse_mode=0 only before 5.9: there, mode 1 with
//     vs/conntrack=1 drops the first SYN of a connection that reuses a
//     source port, a one-second delay; 5.9 fixed it ("ipvs: allow
//     connection reuse for unconfirmed conntrack"), and mode 1 is what
//     reschedules reused ports, so newer kernels are left alone;
//   - arp_ignore=1, arp_announce=2 with strict ARP.
func Sysctls(o SysctlOptions) ([]SysctlSetting, error) {
	out := []SysctlSetting{
		{SysctlVSConntrack, 1},
		{SysctlVSExpireNodestConn, 1},
		{SysctlVSExpireQuiescentTemplate, 1},
		{SysctlIPv4Forward, 1},
	}
	release := o.KernelRelease
	if release == "" {
		var err error
		if release, err = KernelRelease(); err != nil {
			return nil, err
		}
	}
	old, err := KernelOlderThan(release, 5, 9)
	if err != nil {
		return nil, err
	}
	if old {
		out = append(out, SysctlSetting{SysctlVSConnReuseMode, 0})
	}
	if o.StrictARP {
		out = append(out, SysctlSetting{SysctlARPIgnore, 1}, SysctlSetting{SysctlARPAnnounce, 2})
	}
	return out, nil
}

// EnsureSysctls sets what Sysctls lists, each on its own: one that cannot
// be set does not stop the others, and every failure is returned, joined.
// The vs/ parameters exist only once the ip_vs module is loaded (NewKernel
// loads it).
func EnsureSysctls(s Sysctl, o SysctlOptions) error {
	settings, err := Sysctls(o)
	if err != nil {
		return err
	}
	var errs []error
	for _, st := range settings {
		if err := s.Set(st.Name, st.Value); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// KernelRelease returns the running kernel's release (uname -r).
func KernelRelease() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

// ParseKernelVersion reads the major and minor numbers of a kernel
// release such as "6.1.0-28-amd64", "5.4.0-1045-aws",
// "4.18.0-553.el8_10.x86_64" or "6.12.7+deb13-amd64".
func ParseKernelVersion(release string) (major, minor int, err error) {
	s := strings.TrimSpace(release)
	// Keep the leading dotted numbers: "6.12.7+deb13-amd64" -> "6.12.7".
	end := strings.IndexFunc(s, func(r rune) bool { return r != '.' && (r < '0' || r > '9') })
	if end >= 0 {
		s = s[:end]
	}
	parts := strings.Split(s, ".")
	if len(parts) < 2 || parts[0] == "" || parts[1] == "" {
		return 0, 0, fmt.Errorf("kernel release %q: no major.minor version", release)
	}
	if major, err = strconv.Atoi(parts[0]); err != nil {
		return 0, 0, fmt.Errorf("kernel release %q: %w", release, err)
	}
	if minor, err = strconv.Atoi(parts[1]); err != nil {
		return 0, 0, fmt.Errorf("kernel release %q: %w", release, err)
	}
	return major, minor, nil
}

// KernelOlderThan reports whether release is older than major.minor.
func KernelOlderThan(release string, major, minor int) (bool, error) {
	ma, mi, err := ParseKernelVersion(release)
	if err != nil {
		return false, err
	}
	return ma < major || ma == major && mi < minor, nil
}
