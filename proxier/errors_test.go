package proxier

import (
	"errors"
	"syscall"
	"testing"

	"github.com/nftvs/nftvs/ipvs"
)

// A failed sync says which step failed as a type (errors.As), with the
// message the logs have always had. Before, callers matched the
// message's prefix.
func TestSyncErrorCarriesItsStep(t *testing.T) {
	f := newFakeNode(t)
	a := makeService("ns", "a")
	f.addService(a)
	f.p.OnEndpointSliceUpdate("ns", "a", httpSlice(a, ready("10.244.2.1", "node-b")), "a")
	f.kern.Inject = func(ipvs.Op, ipvs.VSKey, *ipvs.RealServer) error { return syscall.ENOMEM }
	_, err := f.p.Sync(false)
	var step *StepError
	if !errors.As(err, &step) || step.Step != StepIPVS {
		t.Fatalf("sync error %v (%T), want a StepError of step ipvs", err, err)
	}
	if !errors.Is(err, syscall.ENOMEM) || err.Error()[:6] != "ipvs: " {
		t.Errorf("sync error %q: want the kernel's ENOMEM, under the prefix \"ipvs: \"", err)
	}
}
