package proxier

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/nftvs/nftvs/internal/mapsize"
	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/nft"
)

// Two Services may ask for one IPVS frontend: the same external IP and
// port, a load-balancer IP that is another Service's ClusterIP or
// external IP, an external IP and port that is a node port on a node
// address, or two fwmarks that collide. One virtual server holds one list
// of real servers, so one Service owns the frontend and the others are
// told (FrontendConflict). The owner is picked the same way on every node
// and after every restart:
//  1. by who may write the address (AddressSource): addresses the
//     cluster allocated (ClusterIPs, node ports, fwmarks), then
//     load-balancer ingress (status, written by a controller with status
//     rights), then externalIPs (spec, written by any user who may
//     write a Service) — so nobody takes over another Service's ClusterIP
//     by naming it, nor a load balancer's IP by naming it first;
//  2. then the oldest Service (creationTimestamp);
//  3. then namespace/name.
// When the owner lets go, the next claimant is replanned in the same sync
// and takes the frontend over.

// AddressSource is who wrote a frontend's address; a lower one wins a
// conflict.
type AddressSource uint8

const (
	// SourceAllocated: a ClusterIP, node port or fwmark, which the cluster
	// allocated.
	SourceAllocated AddressSource = iota
	// SourceLoadBalancer: status.loadBalancer.ingress, which only a
	// controller with the services/status permission writes.
	SourceLoadBalancer
	// SourceExternalIP: spec.externalIPs, which anyone who may write a
	// Service writes.
	SourceExternalIP
)

func (s AddressSource) String() string {
	return [...]string{"a ClusterIP or node port", "a load-balancer ingress IP", "an externalIP"}[s]
}

// claim is one Service's claim on a frontend.
type claim struct {
	source  AddressSource
	created time.Time
	name    types.NamespacedName
}

func (a claim) before(b claim) bool {
	if a.source != b.source {
		return a.source < b.source
	}
	if !a.created.Equal(b.created) {
		return a.created.Before(b.created)
	}
	return cmp.Compare(a.name.String(), b.name.String()) < 0
}

// frontendClaims counts, for every frontend, the Services that ask for it:
// the reference count of IPVS virtual servers.
type frontendClaims struct {
	// by holds each frontend's claims. Nearly every frontend has one
	// claimant: a slice of one costs a tenth of a map of one.
	by map[ipvs.VSKey][]claim
	of map[types.NamespacedName][]ipvs.VSKey
}

func newFrontendClaims() frontendClaims {
	return frontendClaims{by: map[ipvs.VSKey][]claim{}, of: map[types.NamespacedName][]ipvs.VSKey{}}
}

// reserve sizes the maps for the plans of a first or full sync, once:
// grown from empty, a first sync's claims at 10k Services were 10 MB of
// garbage.
func (c *frontendClaims) reserve(results []planResult) {
	frontends := 0
	for _, r := range results {
		for _, pl := range r.plans {
			frontends += len(pl.VirtualServers)
		}
	}
	c.by = mapsize.Grown(c.by, frontends)
	c.of = mapsize.Grown(c.of, len(results))
}

// claimOf is n's claim on k (zero if n has none).
func (c *frontendClaims) claimOf(k ipvs.VSKey, n types.NamespacedName) claim {
	for _, cl := range c.by[k] {
		if cl.name == n {
			return cl
		}
	}
	return claim{}
}

// set replaces n's claims with those of its new plans (none: n is gone)
// and returns the Services whose ownership of a frontend may have changed
// with it: the other claimants of every frontend n took or let go.
func (c *frontendClaims) set(n types.NamespacedName, created time.Time, plans []PortPlan) []types.NamespacedName {
	// A map only when n had claims: at a first sync or a restart no
	// Service had, and 10k empty maps a sync were garbage.
	var before map[ipvs.VSKey]bool
	if len(c.of[n]) > 0 {
		before = make(map[ipvs.VSKey]bool, len(c.of[n]))
	}
	for _, k := range c.of[n] {
		left := slices.DeleteFunc(c.by[k], func(cl claim) bool { return cl.name == n })
		if len(left) == 0 {
			delete(c.by, k)
		} else {
			c.by[k] = left
		}
		before[k] = true
	}
	delete(c.of, n)
	for _, pl := range plans {
		for _, s := range pl.VirtualServers {
			k := s.Key()
			if c.claimOf(k, n).name == n {
				continue // asked for twice by n
			}
			c.by[k] = append(c.by[k], claim{source: pl.Sources[k], created: created, name: n})
			c.of[n] = append(c.of[n], k)
		}
	}
	// The frontends n took or let go (in one of before and now only):
	// their other claimants.
	var others []types.NamespacedName
	claimants := func(k ipvs.VSKey) {
		for _, cl := range c.by[k] {
			if o := cl.name; o != n && !slices.Contains(others, o) {
				others = append(others, o)
			}
		}
	}
	now := c.of[n]
	for k := range before {
		if !slices.Contains(now, k) {
			claimants(k)
		}
	}
	for _, k := range now {
		if !before[k] {
			claimants(k)
		}
	}
	return others
}

// owner is the Service that programs k.
func (c *frontendClaims) owner(k ipvs.VSKey) (claim, bool) {
	var best claim
	found := false
	for _, cl := range c.by[k] {
		if !found || cl.before(best) {
			best, found = cl, true
		}
	}
	return best, found
}

// claimed reports whether any Service asks for k.
func (c *frontendClaims) claimed(k ipvs.VSKey) bool { return len(c.by[k]) > 0 }

// keepOwned drops from n's plans the virtual servers another Service
// owns, with every nft element of those frontends, so that a Service that
// lost a frontend neither changes who may reach it (source ranges,
// firewall) nor steers traffic to it (fwmarks). It returns the conflicts,
// to report.
func (c *frontendClaims) keepOwned(n types.NamespacedName, plans []PortPlan) []error {
	var errs []error
	for i := range plans {
		pl := &plans[i]
		lost := map[ipvs.VSKey]bool{}
		kept := pl.VirtualServers[:0]
		for _, s := range pl.VirtualServers {
			k := s.Key()
			if _, seen := lost[k]; seen {
				continue // asked for twice by this Service: once is enough
			}
			if o, ok := c.owner(k); ok && o.name != n {
				lost[k] = true
				errs = append(errs, &FieldError{Reason: ReasonFrontendConflict, Message: fmt.Sprintf(
					"%s: %s is %s (%s): not programmed for this Service", pl.Name, describeKey(k), ownerName(o.name, n), whyOwner(o, c.claimOf(k, n)))})
				continue
			}
			lost[k] = false
			kept = append(kept, s)
		}
		pl.VirtualServers = kept
		if len(kept) < len(lost) { // a frontend lost: its elements go too
			pl.Elements = slices.DeleteFunc(pl.Elements, func(e nft.Element) bool { return elementOfLost(e, lost) })
		}
	}
	return errs
}

// elementOfLost reports whether e belongs to one of the lost frontends.
func elementOfLost(e nft.Element, lost map[ipvs.VSKey]bool) bool {
	for k, isLost := range lost {
		if !isLost {
			continue
		}
		if k.FWMark != 0 {
			if e.Mark == k.FWMark {
				return true
			}
			continue
		}
		switch e.Set {
		case nft.ClusterIPs, nft.ExternalIPs, nft.ExternalIPsLocal, nft.LoadBalancerIPs, nft.LoadBalancerIPsLocal,
			nft.LoadBalancerFirewall, nft.LoadBalancerSourceRanges, nft.LocalPolicyFWMarks, nft.NoLocalEndpoints:
			if e.Addr == k.Address && e.Port == k.Port && e.Protocol == k.Protocol {
				return true
			}
		}
	}
	return false
}

func describeKey(k ipvs.VSKey) string {
	if k.FWMark != 0 {
		return fmt.Sprintf("fwmark %#x", k.FWMark)
	}
	return k.String()
}

// ownerName names the owner of a frontend to the Service that lost it:
// by name only within its namespace, so that an Event never tells a
// tenant which Services other namespaces hold.
func ownerName(owner, loser types.NamespacedName) string {
	if owner.Namespace == loser.Namespace {
		return "Service " + owner.Name + "'s"
	}
	return "a Service's in another namespace"
}

func whyOwner(owner, loser claim) string {
	switch {
	case owner.source != loser.source:
		return fmt.Sprintf("%s comes before %s", owner.source, loser.source)
	case !owner.created.Equal(loser.created):
		return "the older Service"
	}
	return "first by namespace/name"
}
