package ipvs

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"
)

// ProbeAddress is where ProbeScheduler creates its virtual server: an
// address of TEST-NET-2 (RFC 5737), documentation only, so no Service
// address, node address or real client can be it.
var ProbeAddress = netip.MustParseAddr("198.51.100.1")

// probePorts are tried in turn: if a virtual server already sits on one
// (a probe interrupted by a crash, or somebody's experiment), the next
// is used, and the existing one is never touched.
var probePorts = []uint16{1, 2, 3, 4, 5}

// ProbeScheduler checks at start that scheduler works: it creates a TCP
// virtual server on ProbeAddress with that scheduler and the flags it
// implies (SchedulerFlags: mh gets mh-port), then deletes it. The kernel
// loads the scheduler's module (ip_vs_<scheduler>) on that first use; when
// it cannot, the error names the module.
func ProbeScheduler(h Interface, scheduler string) error {
	if scheduler == "" {
		scheduler = "rr"
	}
	for _, port := range probePorts {
		vs := VirtualServer{
			VSKey:     VSKey{Address: ProbeAddress, Protocol: TCP, Port: port},
			Scheduler: scheduler,
			Flags:     SchedulerFlags(scheduler),
		}
		err := h.AddVirtualServer(vs)
		switch {
		case err == nil:
			if err := h.DeleteVirtualServer(vs.VSKey); err != nil {
				return fmt.Errorf("probe IPVS scheduler %q: remove probe virtual server: %w", scheduler, err)
			}
			return nil
		case errors.Is(err, syscall.EEXIST):
			continue
		case errors.Is(err, syscall.ENOENT):
			return &SchedulerMissingError{Scheduler: scheduler, Err: err}
		default:
			return fmt.Errorf("probe IPVS scheduler %q: %w", scheduler, err)
		}
	}
	return fmt.Errorf("probe IPVS scheduler %q: virtual servers already exist on %s ports %d-%d: not touching them",
		scheduler, ProbeAddress, probePorts[0], probePorts[len(probePorts)-1])
}

// SchedulerMissingError is a scheduler the kernel does not offer: it could
// not load its module (ip_vs_<name>), or there is no such scheduler.
type SchedulerMissingError struct {
	Scheduler string
	Err       error
}

func (e *SchedulerMissingError) Error() string {
	return fmt.Sprintf("IPVS scheduler %q is not available: the kernel could not load module ip_vs_%s (is it built for this kernel? try `modprobe ip_vs_%s`): %v",
		e.Scheduler, e.Scheduler, e.Scheduler, e.Err)
}

func (e *SchedulerMissingError) Unwrap() error { return e.Err }
