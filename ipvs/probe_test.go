package ipvs

import (
	"errors"
	"strings"
	"syscall"
	"testing"
)

func TestProbeScheduler(t *testing.T) {
	f := NewFake()
	f.MissingSchedulers = map[string]bool{"mh": true}
	if err := ProbeScheduler(f, "rr"); err != nil {
		t.Fatal(err)
	}
	if got := f.String(); got != "" {
		t.Errorf("probe left:\n%s", got)
	}
	err := ProbeScheduler(f, "mh")
	if err == nil || !strings.Contains(err.Error(), "module ip_vs_mh") || !errors.Is(err, syscall.ENOENT) {
		t.Errorf("missing scheduler: %v", err)
	}

	// mh asks for the source-port hash flag, as upstream.
	f.MissingSchedulers = nil
	var flags Flags
	c := &captureFlags{Interface: f, flags: &flags}
	if err := ProbeScheduler(c, "mh"); err != nil {
		t.Fatal(err)
	}
	if flags != FlagMHPort {
		t.Errorf("mh probe flags = %v, want %v", flags, FlagMHPort)
	}

	// Someone else's virtual server on the probe port is left alone.
	theirs := VirtualServer{VSKey: VSKey{Address: ProbeAddress, Protocol: TCP, Port: 1}, Scheduler: "wlc"}
	if err := f.AddVirtualServer(theirs); err != nil {
		t.Fatal(err)
	}
	if err := ProbeScheduler(f, "sh"); err != nil {
		t.Fatal(err)
	}
	if got, want := f.String(), "TCP  198.51.100.1:1 wlc\n"; got != want {
		t.Errorf("after probing around another virtual server:\n%s\nwant:\n%s", got, want)
	}
}

type captureFlags struct {
	Interface
	flags *Flags
}

func (c *captureFlags) AddVirtualServer(v VirtualServer) error {
	*c.flags = v.Flags
	return c.Interface.AddVirtualServer(v)
}
