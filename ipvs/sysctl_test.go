package ipvs

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseKernelVersion(t *testing.T) {
	for _, tc := range []struct {
		release      string
		major, minor int
		olderThan59  bool
		wantErr      bool
	}{
		{release: "6.1.0-28-amd64", major: 6, minor: 1},
		{release: "5.10.0-33-cloud-amd64", major: 5, minor: 10},
		{release: "5.9", major: 5, minor: 9},
		{release: "5.8.18-100.fc31.x86_64", major: 5, minor: 8, olderThan59: true},
		{release: "5.4.0-1045-aws", major: 5, minor: 4, olderThan59: true},
		{release: "4.18.0-553.el8_10.x86_64", major: 4, minor: 18, olderThan59: true},
		{release: "6.12.7+deb13-amd64", major: 6, minor: 12},
		{release: "6.8.0-rc3", major: 6, minor: 8},
		{release: "3.10.0-1160.el7.x86_64\n", major: 3, minor: 10, olderThan59: true},
		{release: "10.0.0", major: 10, minor: 0},
		{release: "", wantErr: true},
		{release: "6", wantErr: true},
		{release: "6-amd64", wantErr: true},
		{release: "v6.1", wantErr: true},
		{release: "6..1", wantErr: true},
		{release: "99999999999999999999.1", wantErr: true},
	} {
		major, minor, err := ParseKernelVersion(tc.release)
		if tc.wantErr {
			if err == nil {
				t.Errorf("%q: no error, got %d.%d", tc.release, major, minor)
			}
			continue
		}
		if err != nil || major != tc.major || minor != tc.minor {
			t.Errorf("%q: got %d.%d, %v; want %d.%d", tc.release, major, minor, err, tc.major, tc.minor)
		}
		if old, err := KernelOlderThan(tc.release, 5, 9); err != nil || old != tc.olderThan59 {
			t.Errorf("%q older than 5.9: got %v, %v; want %v", tc.release, old, err, tc.olderThan59)
		}
	}
}

// procSys makes a fake /proc/sys holding the given files.
func procSys(t *testing.T, files map[string]string) Sysctl {
	t.Helper()
	root := t.TempDir()
	for name, v := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return Sysctl{Root: root}
}

func allSysctls(v string) map[string]string {
	m := map[string]string{}
	for _, n := range []string{SysctlVSConntrack, SysctlVSExpireNodestConn, SysctlVSExpireQuiescentTemplate,
		SysctlVSConnReuseMode, SysctlIPv4Forward, SysctlIPv6Forward, SysctlARPIgnore, SysctlARPAnnounce} {
		m[n] = v
	}
	return m
}

func readAll(t *testing.T, s Sysctl) map[string]int {
	t.Helper()
	out := map[string]int{}
	for n := range allSysctls("") {
		v, err := s.Get(n)
		if err != nil {
			t.Fatal(err)
		}
		out[n] = v
	}
	return out
}

func TestEnsureSysctls(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts SysctlOptions
		want map[string]int
	}{{
		name: "6.1, IPv4 only: conn_reuse_mode left alone",
		opts: SysctlOptions{KernelRelease: "6.1.0-28-amd64"},
		want: map[string]int{SysctlVSConntrack: 1, SysctlVSExpireNodestConn: 1, SysctlVSExpireQuiescentTemplate: 1,
			SysctlIPv4Forward: 1, SysctlVSConnReuseMode: 7, SysctlIPv6Forward: 7, SysctlARPIgnore: 7, SysctlARPAnnounce: 7},
	}, {
		// IPv6 forwarding is never set, as kube-proxy never sets it: on a
		// SLAAC node it stops Router Advertisements being accepted.
		name: "5.4 with strict ARP",
		opts: SysctlOptions{KernelRelease: "5.4.0-1045-aws", StrictARP: true},
		want: map[string]int{SysctlVSConntrack: 1, SysctlVSExpireNodestConn: 1, SysctlVSExpireQuiescentTemplate: 1,
			SysctlIPv4Forward: 1, SysctlVSConnReuseMode: 0, SysctlIPv6Forward: 7, SysctlARPIgnore: 1, SysctlARPAnnounce: 2},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			s := procSys(t, allSysctls("7"))
			if err := EnsureSysctls(s, tc.opts); err != nil {
				t.Fatal(err)
			}
			got := readAll(t, s)
			for n, v := range tc.want {
				if got[n] != v {
					t.Errorf("%s = %d, want %d", n, got[n], v)
				}
			}
		})
	}
}

func TestEnsureSysctlsErrors(t *testing.T) {
	// ip_vs not loaded: net/ipv4/vs is missing. The others are still set,
	// and the error names every sysctl that failed.
	files := allSysctls("0")
	delete(files, SysctlVSConntrack)
	delete(files, SysctlVSExpireNodestConn)
	s := procSys(t, files)
	err := EnsureSysctls(s, SysctlOptions{KernelRelease: "6.1.0"})
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"set sysctl net/ipv4/vs/conntrack=1", "set sysctl net/ipv4/vs/expire_nodest_conn=1", "kernel module loaded"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("error %v is not ErrNotExist", err)
	}
	if _, err := os.Stat(filepath.Join(s.Root, SysctlVSConntrack)); err == nil {
		t.Errorf("a missing sysctl was created as a file")
	}
	if v, _ := s.Get(SysctlIPv4Forward); v != 1 {
		t.Errorf("ip_forward = %d: one failure stopped the others", v)
	}

	// A value already right is not written: a read-only tree is fine.
	ro := procSys(t, allSysctls("1"))
	for n := range allSysctls("") {
		if err := os.Chmod(filepath.Join(ro.Root, n), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	if err := ro.Set(SysctlVSConntrack, 1); err != nil {
		t.Errorf("setting an unchanged read-only sysctl: %v", err)
	}
	if os.Geteuid() != 0 { // root writes through 0444
		if err := ro.Set(SysctlVSConntrack, 0); err == nil || !strings.Contains(err.Error(), "net/ipv4/vs/conntrack=0") {
			t.Errorf("writing a read-only sysctl: %v", err)
		}
	}

	if _, err := Sysctls(SysctlOptions{KernelRelease: "garbage"}); err == nil || !strings.Contains(err.Error(), `"garbage"`) {
		t.Errorf("bad release: %v", err)
	}
}

func TestKernelRelease(t *testing.T) {
	r, err := KernelRelease()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ParseKernelVersion(r); err != nil {
		t.Errorf("this machine's release: %v", err)
	}
}
