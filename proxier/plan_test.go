package proxier

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nftvs/nftvs/internal/l4"
	"github.com/nftvs/nftvs/ipvs"
)

const thisNode = "node-a"

func testConfig() *PlanConfig {
	return &PlanConfig{
		Node: Node{
			Name: thisNode, Zone: "zone-a",
			IPs:               []netip.Addr{netip.MustParseAddr("192.168.0.10")},
			NodePortAddresses: []netip.Addr{netip.MustParseAddr("192.168.0.10"), netip.MustParseAddr("fd00::10")},
		},
		Scheduler: "rr", IPv4: true, IPv6: true,
	}
}

// dump prints plans the way a reviewer reads them: virtual servers with
// real servers (ipvsadm style), kube-ipvs0 addresses, nft elements.
func dump(plans []PortPlan) string {
	var b strings.Builder
	for _, p := range plans {
		fmt.Fprintf(&b, "%s\n", p.Name)
		for _, s := range p.VirtualServers {
			fmt.Fprintf(&b, "  %s %s", vsString(s.VSKey), s.Scheduler)
			if s.Flags&ipvs.FlagPersistent != 0 {
				fmt.Fprintf(&b, " persistent %d", s.Timeout)
			}
			if s.Flags&ipvs.FlagMHPort != 0 {
				fmt.Fprintf(&b, " mh-flags")
			}
			var rs []string
			for _, r := range s.RealServers {
				rs = append(rs, fmt.Sprintf("%s w%d", netip.AddrPortFrom(r.Address, r.Port), r.Weight))
			}
			fmt.Fprintf(&b, " -> [%s]\n", strings.Join(rs, ", "))
		}
		for _, a := range p.Addresses {
			fmt.Fprintf(&b, "  addr %s\n", a)
		}
		for _, e := range p.Elements {
			fmt.Fprintf(&b, "  %s %s\n", e.Set, e)
		}
		if p.HealthCheckNodePort != 0 {
			fmt.Fprintf(&b, "  healthcheck %d local=%d", p.HealthCheckNodePort, p.LocalEndpoints.IPv4)
			if p.LocalEndpoints.IPv6 > 0 {
				fmt.Fprintf(&b, " local6=%d", p.LocalEndpoints.IPv6)
			}
			b.WriteString("\n")
		}
		if p.ExternalNoLocal || p.InternalNoLocal {
			fmt.Fprintf(&b, "  no-local external=%v internal=%v\n", p.ExternalNoLocal, p.InternalNoLocal)
		}
	}
	return b.String()
}

func vsString(k ipvs.VSKey) string {
	if k.FWMark != 0 {
		fam := "v4"
		if k.IPv6 {
			fam = "v6"
		}
		return fmt.Sprintf("FWM %#x %s", k.FWMark, fam)
	}
	return fmt.Sprintf("%s %s", k.Protocol, netip.AddrPortFrom(k.Address, k.Port))
}

func trim(s string) string {
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		out = append(out, strings.TrimRight(strings.TrimLeft(l, "\t"), " "))
	}
	return strings.Join(out, "\n") + "\n"
}

type planCase struct {
	name   string
	svc    *v1.Service
	slices func(*v1.Service) []*discovery.EndpointSlice
	cfg    func(*PlanConfig)
	want   string
	err    string
}

func runPlanCases(t *testing.T, cases []planCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := testConfig()
			if c.cfg != nil {
				c.cfg(cfg)
			}
			var slices []*discovery.EndpointSlice
			if c.slices != nil {
				slices = c.slices(c.svc)
			}
			plans, err := PlanService(c.svc, slices, cfg)
			if c.err == "" && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
				t.Fatalf("error %v, want one containing %q", err, c.err)
			}
			if got, want := dump(plans), trim(c.want); strings.TrimSpace(want) == "" && got != "" || strings.TrimSpace(want) != "" && got != want {
				t.Fatalf("plan:\n%s\nwant:\n%s", got, want)
			}
			for _, p := range plans {
				for _, e := range p.Elements {
					if err := e.Validate(); err != nil {
						t.Errorf("planned element invalid: %v", err)
					}
				}
			}
		})
	}
}

func TestPlanClusterIP(t *testing.T) {
	runPlanCases(t, []planCase{{
		name: "ready endpoints, hairpin for local ones",
		svc:  makeService("ns", "web"),
		slices: func(s *v1.Service) []*discovery.EndpointSlice {
			return []*discovery.EndpointSlice{httpSlice(s, ready("10.244.1.5", thisNode), ready("10.244.2.5", "node-b"))}
		},
		want: `
		ns/web:http
		  TCP 10.96.0.10:80 rr -> [10.244.1.5:8080 w1, 10.244.2.5:8080 w1]
		  addr 10.96.0.10
		  hairpin 10.244.1.5 . tcp . 8080 . 10.244.1.5
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		`,
	}, {
		name: "no endpoints: virtual server without real servers",
		svc:  makeService("ns", "web"),
		want: `
		ns/web:http
		  TCP 10.96.0.10:80 rr -> []
		  addr 10.96.0.10
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		`,
	}, {
		name: "dual-stack, UDP and SCTP ports, unnamed slices per family",
		svc: makeService("ns", "dns", clusterIPs("10.96.0.53", "fd00:96::53"), ports(
			v1.ServicePort{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP},
			v1.ServicePort{Name: "sig", Port: 9, Protocol: v1.ProtocolSCTP})),
		slices: func(s *v1.Service) []*discovery.EndpointSlice {
			return []*discovery.EndpointSlice{
				makeSlice(s, discovery.AddressTypeIPv4, "dns", 5353, v1.ProtocolUDP, ready("10.244.2.1", "node-b")),
				makeSlice(s, discovery.AddressTypeIPv6, "dns", 5353, v1.ProtocolUDP, ready("fd00:244::1", "node-b")),
				makeSlice(s, discovery.AddressTypeIPv4, "sig", 9999, v1.ProtocolSCTP, ready("10.244.2.1", "node-b")),
			}
		},
		want: `
		ns/dns:dns
		  UDP 10.96.0.53:53 rr -> [10.244.2.1:5353 w1]
		  UDP [fd00:96::53]:53 rr -> [[fd00:244::1]:5353 w1]
		  addr 10.96.0.53
		  addr fd00:96::53
		  cluster-ips 10.96.0.53 . udp . 53
		  ipvs-addresses 10.96.0.53
		  cluster-ips fd00:96::53 . udp . 53
		  ipvs-addresses fd00:96::53
		ns/dns:sig
		  SCTP 10.96.0.53:9 rr -> [10.244.2.1:9999 w1]
		  SCTP [fd00:96::53]:9 rr -> []
		  addr 10.96.0.53
		  addr fd00:96::53
		  cluster-ips 10.96.0.53 . sctp . 9
		  ipvs-addresses 10.96.0.53
		  cluster-ips fd00:96::53 . sctp . 9
		  ipvs-addresses fd00:96::53
		`,
	}, {
		name: "IPv6 family disabled on this node",
		svc:  makeService("ns", "web", clusterIPs("fd00:96::10")),
		cfg:  func(c *PlanConfig) { c.IPv6 = false },
		want: ``,
	}, {
		name: "session affinity with timeout, and the default timeout",
		svc:  makeService("ns", "web", affinity(600)),
		want: `
		ns/web:http
		  TCP 10.96.0.10:80 rr persistent 600 -> []
		  addr 10.96.0.10
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		`,
	}, {
		name: "default affinity timeout, mh scheduler flags",
		svc:  makeService("ns", "web", affinity(0)),
		cfg:  func(c *PlanConfig) { c.Scheduler = "mh" },
		want: `
		ns/web:http
		  TCP 10.96.0.10:80 mh persistent 10800 mh-flags -> []
		  addr 10.96.0.10
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		`,
	}, {
		name: "internalTrafficPolicy Local: only local endpoints",
		svc:  makeService("ns", "web", itpLocal),
		slices: func(s *v1.Service) []*discovery.EndpointSlice {
			return []*discovery.EndpointSlice{httpSlice(s, ready("10.244.1.5", thisNode), ready("10.244.2.5", "node-b"))}
		},
		want: `
		ns/web:http
		  TCP 10.96.0.10:80 rr -> [10.244.1.5:8080 w1]
		  addr 10.96.0.10
		  hairpin 10.244.1.5 . tcp . 8080 . 10.244.1.5
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		`,
	}, {
		name: "internalTrafficPolicy Local without local endpoints",
		svc:  makeService("ns", "web", itpLocal),
		slices: func(s *v1.Service) []*discovery.EndpointSlice {
			return []*discovery.EndpointSlice{httpSlice(s, ready("10.244.2.5", "node-b"))}
		},
		want: `
		ns/web:http
		  TCP 10.96.0.10:80 rr -> []
		  addr 10.96.0.10
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		  no-local external=false internal=true
		`,
	}})
}

func TestPlanEndpointLifecycle(t *testing.T) {
	runPlanCases(t, []planCase{{
		name: "not ready, serving-terminating and terminating endpoints get weight 0: they drain (drain.go)",
		svc:  makeService("ns", "web"),
		slices: func(s *v1.Service) []*discovery.EndpointSlice {
			return []*discovery.EndpointSlice{httpSlice(s,
				ready("10.244.2.1", "node-b"), notReady("10.244.2.2", "node-b"),
				servingTerminating("10.244.2.3", "node-b"), terminatingNotServing("10.244.2.4", "node-b"))}
		},
		want: `
		ns/web:http
		  TCP 10.96.0.10:80 rr -> [10.244.2.1:8080 w1, 10.244.2.2:8080 w0, 10.244.2.3:8080 w0, 10.244.2.4:8080 w0]
		  addr 10.96.0.10
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		`,
	}, {
		name: "no ready endpoint: serving-terminating ones carry traffic",
		svc:  makeService("ns", "web"),
		slices: func(s *v1.Service) []*discovery.EndpointSlice {
			return []*discovery.EndpointSlice{httpSlice(s,
				notReady("10.244.2.2", "node-b"), servingTerminating("10.244.2.3", "node-b"), terminatingNotServing("10.244.2.4", "node-b"))}
		},
		want: `
		ns/web:http
		  TCP 10.96.0.10:80 rr -> [10.244.2.2:8080 w0, 10.244.2.3:8080 w1, 10.244.2.4:8080 w0]
		  addr 10.96.0.10
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		`,
	}, {
		// kube-proxy takes Ready as it is: the EndpointSlice controller
		// keeps a terminating pod of a Service with publishNotReadyAddresses
		// ready, and upstream's e2e "should create endpoints for unready
		// pods" expects its traffic to flow.
		name: "ready and terminating (publishNotReadyAddresses) carries traffic with the ready ones",
		svc:  makeService("ns", "web"),
		slices: func(s *v1.Service) []*discovery.EndpointSlice {
			return []*discovery.EndpointSlice{httpSlice(s,
				ready("10.244.2.1", "node-b"), readyTerminating("10.244.2.3", "node-b"))}
		},
		want: `
		ns/web:http
		  TCP 10.96.0.10:80 rr -> [10.244.2.1:8080 w1, 10.244.2.3:8080 w1]
		  addr 10.96.0.10
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		`,
	}, {
		name: "unset serving means serving: a terminating endpoint without it is in the fallback",
		svc:  makeService("ns", "web"),
		slices: func(s *v1.Service) []*discovery.EndpointSlice {
			f, t := false, true
			return []*discovery.EndpointSlice{httpSlice(s,
				notReady("10.244.2.2", "node-b"), ep{ip: "10.244.2.3", node: "node-b", ready: &f, terminating: &t})}
		},
		want: `
		ns/web:http
		  TCP 10.96.0.10:80 rr -> [10.244.2.2:8080 w0, 10.244.2.3:8080 w1]
		  addr 10.96.0.10
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		`,
	}, {
		name: "endpoint in two slices counts once, the ready copy wins",
		svc:  makeService("ns", "web"),
		slices: func(s *v1.Service) []*discovery.EndpointSlice {
			return []*discovery.EndpointSlice{
				httpSlice(s, notReady("10.244.2.1", "node-b")),
				httpSlice(s, ready("10.244.2.1", "node-b")),
			}
		},
		want: `
		ns/web:http
		  TCP 10.96.0.10:80 rr -> [10.244.2.1:8080 w1]
		  addr 10.96.0.10
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		`,
	}, {
		name: "slices of other ports, protocols and families are ignored",
		svc:  makeService("ns", "web"),
		slices: func(s *v1.Service) []*discovery.EndpointSlice {
			return []*discovery.EndpointSlice{
				makeSlice(s, discovery.AddressTypeIPv4, "metrics", 9090, v1.ProtocolTCP, ready("10.244.2.1", "node-b")),
				makeSlice(s, discovery.AddressTypeIPv4, "http", 8080, v1.ProtocolUDP, ready("10.244.2.2", "node-b")),
				makeSlice(s, discovery.AddressTypeIPv6, "http", 8080, v1.ProtocolTCP, ready("fd00::1", "node-b")),
				makeSlice(s, discovery.AddressTypeFQDN, "http", 8080, v1.ProtocolTCP, ready("example.com", "node-b")),
			}
		},
		want: `
		ns/web:http
		  TCP 10.96.0.10:80 rr -> []
		  addr 10.96.0.10
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		`,
	}})
}

func TestPlanTopology(t *testing.T) {
	runPlanCases(t, []planCase{{
		name: "zone hints for this zone: others drain at weight 0",
		svc:  makeService("ns", "web"),
		slices: func(s *v1.Service) []*discovery.EndpointSlice {
			return []*discovery.EndpointSlice{httpSlice(s,
				ready("10.244.1.1", "node-x").inZones("zone-a"), ready("10.244.2.1", "node-b").inZones("zone-b"))}
		},
		want: `
		ns/web:http
		  TCP 10.96.0.10:80 rr -> [10.244.1.1:8080 w1, 10.244.2.1:8080 w0]
		  addr 10.96.0.10
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		`,
	}, {
		name: "hints ignored when one endpoint lacks them",
		svc:  makeService("ns", "web"),
		slices: func(s *v1.Service) []*discovery.EndpointSlice {
			return []*discovery.EndpointSlice{httpSlice(s,
				ready("10.244.1.1", "node-x").inZones("zone-a"), ready("10.244.2.1", "node-b"))}
		},
		want: `
		ns/web:http
		  TCP 10.96.0.10:80 rr -> [10.244.1.1:8080 w1, 10.244.2.1:8080 w1]
		  addr 10.96.0.10
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		`,
	}, {
		name: "hints ignored when none is for this zone",
		svc:  makeService("ns", "web"),
		slices: func(s *v1.Service) []*discovery.EndpointSlice {
			return []*discovery.EndpointSlice{httpSlice(s,
				ready("10.244.1.1", "node-x").inZones("zone-c"), ready("10.244.2.1", "node-b").inZones("zone-b"))}
		},
		want: `
		ns/web:http
		  TCP 10.96.0.10:80 rr -> [10.244.1.1:8080 w1, 10.244.2.1:8080 w1]
		  addr 10.96.0.10
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		`,
	}, {
		name: "node hints (PreferSameNode) win over zone hints",
		svc:  makeService("ns", "web"),
		slices: func(s *v1.Service) []*discovery.EndpointSlice {
			return []*discovery.EndpointSlice{httpSlice(s,
				ready("10.244.1.1", thisNode).inZones("zone-a").forNodes(thisNode),
				ready("10.244.1.2", "node-x").inZones("zone-a").forNodes("node-x"))}
		},
		want: `
		ns/web:http
		  TCP 10.96.0.10:80 rr -> [10.244.1.1:8080 w1, 10.244.1.2:8080 w0]
		  addr 10.96.0.10
		  hairpin 10.244.1.1 . tcp . 8080 . 10.244.1.1
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		`,
	}})
}

func TestPlanExternal(t *testing.T) {
	two := func(s *v1.Service) []*discovery.EndpointSlice {
		return []*discovery.EndpointSlice{httpSlice(s, ready("10.244.1.5", thisNode), ready("10.244.2.5", "node-b"))}
	}
	runPlanCases(t, []planCase{{
		name:   "NodePort on every node-port address of the family",
		svc:    makeService("ns", "web", nodePort(30080)),
		slices: two,
		want: `
		ns/web:http
		  TCP 10.96.0.10:80 rr -> [10.244.1.5:8080 w1, 10.244.2.5:8080 w1]
		  TCP 192.168.0.10:30080 rr -> [10.244.1.5:8080 w1, 10.244.2.5:8080 w1]
		  addr 10.96.0.10
		  hairpin 10.244.1.5 . tcp . 8080 . 10.244.1.5
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		  node-ports tcp . 30080
		`,
	}, {
		name:   "LoadBalancer with externalIPs and source ranges; node allowed",
		svc:    makeService("ns", "web", loadBalancer(30080, "192.0.2.10"), externalIPs("198.51.100.7"), sourceRanges("203.0.113.0/24", "192.168.0.0/16")),
		slices: two,
		want: `
		ns/web:http
		  TCP 10.96.0.10:80 rr -> [10.244.1.5:8080 w1, 10.244.2.5:8080 w1]
		  TCP 198.51.100.7:80 rr -> [10.244.1.5:8080 w1, 10.244.2.5:8080 w1]
		  TCP 192.0.2.10:80 rr -> [10.244.1.5:8080 w1, 10.244.2.5:8080 w1]
		  TCP 192.168.0.10:30080 rr -> [10.244.1.5:8080 w1, 10.244.2.5:8080 w1]
		  addr 10.96.0.10
		  addr 192.0.2.10
		  addr 198.51.100.7
		  hairpin 10.244.1.5 . tcp . 8080 . 10.244.1.5
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		  external-ips 198.51.100.7 . tcp . 80
		  ipvs-addresses 198.51.100.7
		  load-balancer-ips 192.0.2.10 . tcp . 80
		  ipvs-addresses 192.0.2.10
		  load-balancer-firewall 192.0.2.10 . tcp . 80
		  load-balancer-source-ranges 192.0.2.10 . tcp . 80 . 203.0.113.0/24
		  load-balancer-source-ranges 192.0.2.10 . tcp . 80 . 192.168.0.0/16
		  load-balancer-source-ranges 192.0.2.10 . tcp . 80 . 192.0.2.10/32
		  node-ports tcp . 30080
		`,
	}, {
		name: "LoadBalancer ipMode Proxy is not bound",
		svc: makeService("ns", "web", loadBalancer(0, "192.0.2.10"), func(s *v1.Service) {
			m := v1.LoadBalancerIPModeProxy
			s.Status.LoadBalancer.Ingress[0].IPMode = &m
		}),
		want: `
		ns/web:http
		  TCP 10.96.0.10:80 rr -> []
		  addr 10.96.0.10
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		`,
	}, {
		name:   "externalTrafficPolicy Local: local endpoints outside, all endpoints inside via fwmark",
		svc:    makeService("ns", "web", loadBalancer(30080, "192.0.2.10"), etpLocal(32100)),
		slices: two,
		want: `
		ns/web:http
		  TCP 10.96.0.10:80 rr -> [10.244.1.5:8080 w1, 10.244.2.5:8080 w1]
		  TCP 192.0.2.10:80 rr -> [10.244.1.5:8080 w1]
		  TCP 192.168.0.10:30080 rr -> [10.244.1.5:8080 w1]
		  FWM 0x75805000 v4 rr -> [10.244.1.5:8080 w1, 10.244.2.5:8080 w1]
		  addr 10.96.0.10
		  addr 192.0.2.10
		  hairpin 10.244.1.5 . tcp . 8080 . 10.244.1.5
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		  load-balancer-ips-local 192.0.2.10 . tcp . 80
		  ipvs-addresses 192.0.2.10
		  local-policy-fwmarks 192.0.2.10 . tcp . 80 : 0x75805000
		  node-ports-local tcp . 30080
		  node-port-fwmarks tcp . 30080 : 0x75805000
		  health-check-node-ports 32100
		  healthcheck 32100 local=1
		`,
	}, {
		name: "externalTrafficPolicy Local without local endpoints: nothing for external clients",
		svc:  makeService("ns", "web", nodePort(30080), etpLocal(0)),
		slices: func(s *v1.Service) []*discovery.EndpointSlice {
			return []*discovery.EndpointSlice{httpSlice(s, ready("10.244.2.5", "node-b"))}
		},
		want: `
		ns/web:http
		  TCP 10.96.0.10:80 rr -> [10.244.2.5:8080 w1]
		  TCP 192.168.0.10:30080 rr -> []
		  FWM 0x75805000 v4 rr -> [10.244.2.5:8080 w1]
		  addr 10.96.0.10
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		  node-ports-local tcp . 30080
		  node-port-fwmarks tcp . 30080 : 0x75805000
		  node-ports-no-local-endpoints tcp . 30080
		  no-local external=true internal=false
		`,
	}})
}

func TestPlanIgnoredAndBadServices(t *testing.T) {
	runPlanCases(t, []planCase{
		{name: "headless", svc: makeService("ns", "h", clusterIPs("None"))},
		{name: "ExternalName", svc: makeService("ns", "x", func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeExternalName })},
		{name: "another proxy's Service", svc: makeService("ns", "o", func(s *v1.Service) {
			s.Labels = map[string]string{"service.kubernetes.io/service-proxy-name": "other"}
		})},
		{
			name: "a bad IP and a bad port are reported, the rest is planned",
			svc: makeService("ns", "web", externalIPs("not-an-ip", "198.51.100.7"), ports(
				v1.ServicePort{Name: "http", Port: 80},
				v1.ServicePort{Name: "icmp", Port: 1, Protocol: "ICMP"},
				v1.ServicePort{Name: "huge", Port: 70000})),
			err: `externalIPs: invalid IP "not-an-ip"`,
			want: `
			ns/web:http
			  TCP 10.96.0.10:80 rr -> []
			  TCP 198.51.100.7:80 rr -> []
			  addr 10.96.0.10
			  addr 198.51.100.7
			  cluster-ips 10.96.0.10 . tcp . 80
			  ipvs-addresses 10.96.0.10
			  external-ips 198.51.100.7 . tcp . 80
			  ipvs-addresses 198.51.100.7
			`,
		},
	})
}

// FuzzPlanService feeds arbitrary Services and EndpointSlices (as JSON)
// to the planner: it must never panic, and whatever it plans must be
// programmable (valid nft elements, valid virtual server keys).
func FuzzPlanService(f *testing.F) {
	svc := makeService("ns", "web", loadBalancer(30080, "192.0.2.10"), etpLocal(32100), sourceRanges("10.0.0.0/8"))
	seed, _ := json.Marshal(struct {
		Service *v1.Service
		Slices  []*discovery.EndpointSlice
	}{svc, []*discovery.EndpointSlice{httpSlice(svc, ready("10.244.1.5", thisNode), servingTerminating("10.244.2.5", "n"))}})
	f.Add(seed)
	f.Add([]byte(`{"Service":{"spec":{"clusterIP":"::ffff:1.2.3.4","clusterIPs":["1.2.3.4","zz"],"ports":[{"port":0},{"port":1,"nodePort":-1}],"externalIPs":["0.0.0.0"]}}}`))
	f.Add([]byte(`{"Service":{"spec":{"clusterIP":"fe80::1%eth0","ports":[{"port":5}],"loadBalancerSourceRanges":["1.2.3.4/40","::/0"]}},"Slices":[{"addressType":"IPv4","ports":[{"port":99999}],"endpoints":[{"addresses":[]}]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var in struct {
			Service *v1.Service
			Slices  []*discovery.EndpointSlice
		}
		if json.Unmarshal(data, &in) != nil || in.Service == nil {
			return
		}
		plans, _ := PlanService(in.Service, in.Slices, testConfig())
		for _, p := range plans {
			for _, e := range p.Elements {
				if err := e.Validate(); err != nil {
					t.Fatalf("invalid element planned: %v", err)
				}
			}
			for _, s := range p.VirtualServers {
				if s.FWMark == 0 && (!s.Address.IsValid() || s.Port == 0) {
					t.Fatalf("invalid virtual server planned: %+v", s.VSKey)
				}
				for _, r := range s.RealServers {
					if !r.Address.IsValid() || r.Port == 0 || r.Address.Is4() != (s.FWMark == 0 && s.Address.Is4() || s.FWMark != 0 && !s.IPv6) {
						t.Fatalf("invalid real server %+v in %+v", r, s.VSKey)
					}
				}
			}
		}
	})
}

// TestPlanRefusesHostileFields: the smaller holes of issue 26, at the
// planning layer.
func TestPlanRefusesHostileFields(t *testing.T) {
	reasons := func(err error) []string {
		var out []string
		for _, e := range unjoin(err) {
			var fe *FieldError
			if errors.As(e, &fe) {
				out = append(out, fe.Reason)
			}
		}
		return out
	}
	t.Run("an IPv4-mapped source range fails closed, with an Event", func(t *testing.T) {
		svc := makeService("ns", "lb", clusterIPs("10.96.0.11"), loadBalancer(0, "192.0.2.10"), sourceRanges("::ffff:10.0.0.0/104"))
		plans, err := PlanService(svc, nil, testConfig())
		if got := reasons(err); !slices.Equal(got, []string{ReasonInvalidSourceRange, ReasonInvalidSourceRange}) {
			t.Errorf("reasons %v, want two InvalidSourceRange (the range, then no usable range)", got)
		}
		d := dump(plans)
		if !strings.Contains(d, "load-balancer-firewall 192.0.2.10 . tcp . 80") || strings.Contains(d, "load-balancer-source-ranges") {
			t.Errorf("not closed:\n%s", d)
		}
	})
	t.Run("the API server's address", func(t *testing.T) {
		cfg := testConfig()
		cfg.APIServer = []netip.Addr{netip.MustParseAddr("192.0.2.1")}
		svc := makeService("ns", "evil", clusterIPs("10.96.0.11"), externalIPs("192.0.2.1"), loadBalancer(0, "192.0.2.1"))
		plans, err := PlanService(svc, nil, cfg)
		if got := reasons(err); !slices.Equal(got, []string{ReasonRefusedAddress, ReasonRefusedAddress}) {
			t.Errorf("reasons %v, want RefusedAddress twice", got)
		}
		if d := dump(plans); strings.Contains(d, "192.0.2.1 ") || strings.Contains(d, "192.0.2.1:") {
			t.Errorf("the API server's address is planned:\n%s", d)
		}
	})
	t.Run("fan-out beyond a bound refuses the Service whole", func(t *testing.T) {
		var ips []string
		for i := range 100 {
			ips = append(ips, fmt.Sprintf("198.51.100.%d", i+1))
		}
		var ports []v1.ServicePort
		for i := range 50 {
			ports = append(ports, v1.ServicePort{Name: fmt.Sprint("p", i), Port: int32(1000 + i), Protocol: v1.ProtocolTCP})
		}
		svc := makeService("ns", "wide", clusterIPs("10.96.0.11"), externalIPs(ips...), func(s *v1.Service) { s.Spec.Ports = ports })
		cfg := testConfig()
		if plans, err := PlanService(svc, nil, cfg); err != nil || len(plans) != 50 {
			t.Fatalf("5,050 virtual servers under the default bound: %d plans, %v", len(plans), err)
		}
		cfg.MaxVirtualServers = 5000
		plans, err := PlanService(svc, nil, cfg)
		if got := reasons(err); len(plans) != 0 || !slices.Equal(got, []string{ReasonServiceTooLarge}) ||
			!strings.Contains(err.Error(), "5050 IPVS virtual servers, more than 5000") {
			t.Errorf("plans %d, err %v", len(plans), err)
		}
		var ranges []string
		for _, ip := range ips {
			ranges = append(ranges, ip+"/32")
		}
		lb := makeService("ns", "ranges", clusterIPs("10.96.0.12"), loadBalancer(0, "192.0.2.10", "192.0.2.11"),
			sourceRanges(ranges...), func(s *v1.Service) { s.Spec.Ports = ports })
		cfg.MaxSourceRanges = 10_000 // 2 IPs × 50 ports × (100 ranges + the node's) = 10,100
		if plans, err := PlanService(lb, nil, cfg); len(plans) != 0 || !slices.Equal(reasons(err), []string{ReasonServiceTooLarge}) {
			t.Errorf("source ranges: plans %d, err %v", len(plans), err)
		}
	})
}

// TestOwnsFWMark: every fwmark nftvs makes is its own, and marks others
// make (keepalived's small integers, the bare masquerade bit, foreign
// bits) are not.
func TestOwnsFWMark(t *testing.T) {
	for _, masq := range []uint32{0, 1 << 14, 1 << 3} {
		own := OwnsFWMark(masq)
		m := masq
		if m == 0 {
			m = 1 << 14
		}
		name := ServicePortName{Namespace: "ns", Name: "lb", Port: "http"}
		for _, proto := range []l4.Protocol{l4.TCP, l4.UDP, l4.SCTP} {
			for _, np := range []uint16{0, 30000, 32767, 65535} {
				if mark := fwmark(name, proto, np, m); !own(mark) {
					t.Errorf("masq %#x: nftvs's fwmark %#x not owned", masq, mark)
				}
			}
		}
		for _, foreign := range []uint32{1, 7, 100, m, m | 1<<12, 30000 << 16, 30000<<16 | 1<<12, 30000<<16 | 1<<12 | m | 1} {
			if own(foreign) {
				t.Errorf("masq %#x: foreign fwmark %#x owned", masq, foreign)
			}
		}
	}
}

// TestPlanAllInParallel: a sync that replans many Services (a first or
// full sync) plans them on several goroutines; every Service gets the
// plans PlanService gives it alone, errors included.
func TestPlanAllInParallel(t *testing.T) {
	cfg := testConfig()
	ins := map[types.NamespacedName]serviceInput{}
	var names []types.NamespacedName
	for i := range 3 * parallelPlanAt {
		svc := makeService("ns", fmt.Sprintf("svc-%d", i), clusterIPs(fmt.Sprintf("10.96.%d.%d", i>>8, i&0xff)))
		if i%7 == 0 {
			svc.Spec.ExternalIPs = []string{"not-an-ip"} // a field error
		}
		n := types.NamespacedName{Namespace: "ns", Name: svc.Name}
		ins[n] = serviceInput{svc: svc, slices: []*epSlice{newEpSlice(httpSlice(svc, ready(fmt.Sprintf("10.244.%d.%d", i>>8, i&0xff), "node-b")))}}
		names = append(names, n)
	}
	names = append(names, types.NamespacedName{Namespace: "ns", Name: "deleted"}) // no Service: left zero
	got := planAll(names, ins, cfg)
	for i, n := range names {
		var want planResult
		if in := ins[n]; in.svc != nil {
			want.plans, want.err = planService(in.svc, in.slices, cfg)
		}
		if !reflect.DeepEqual(got[i].plans, want.plans) || fmt.Sprint(got[i].err) != fmt.Sprint(want.err) {
			t.Fatalf("%s: planAll gave %v (%v), PlanService %v (%v)", n, got[i].plans, got[i].err, want.plans, want.err)
		}
	}
	if got[0].err == nil || got[1].err != nil || len(got[1].plans) == 0 {
		t.Errorf("the workload lost its point: svc-0 err %v, svc-1 err %v plans %d", got[0].err, got[1].err, len(got[1].plans))
	}
}

// TestVirtualServersOwnTheirRealServers: no two virtual servers share
// their real servers' array (the first to use a selection takes it, the
// others get a copy), since drains filter a virtual server's own in
// place.
func TestVirtualServersOwnTheirRealServers(t *testing.T) {
	for _, local := range []bool{false, true} {
		tweaks := []func(*v1.Service){nodePort(30080), loadBalancer(30080, "192.0.2.1"), externalIPs("192.0.2.9")}
		if local {
			tweaks = append(tweaks, etpLocal(32000))
		}
		svc := makeService("ns", "web", tweaks...)
		plans, err := PlanService(svc, []*discovery.EndpointSlice{httpSlice(svc, ready("10.244.1.5", thisNode), ready("10.244.2.6", "node-b"))}, testConfig())
		if err != nil {
			t.Fatal(err)
		}
		seen := map[*ipvs.RealServer]string{}
		n := 0
		for _, pl := range plans {
			for _, s := range pl.VirtualServers {
				if len(s.RealServers) == 0 {
					continue
				}
				n++
				if other, ok := seen[&s.RealServers[0]]; ok {
					t.Errorf("local %v: %s shares its real servers with %s", local, s.VSKey, other)
				}
				seen[&s.RealServers[0]] = s.VSKey.String()
			}
		}
		if n < 4 {
			t.Errorf("local %v: only %d virtual servers with real servers", local, n)
		}
	}
}
