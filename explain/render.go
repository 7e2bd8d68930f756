package explain

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// render writes the answer as text or JSON. fe is set when the question
// was an address:port; s is nil when no Service owns it.
func render(out io.Writer, format string, fe *Frontend, s *Service) error {
	if format == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if s == nil {
			return enc.Encode(fe)
		}
		return enc.Encode(s)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	defer w.Flush()
	if fe != nil {
		if fe.Service == "" {
			fmt.Fprintf(w, "%s: no Service's virtual server on this node\n", fe.Frontend)
			fmt.Fprintf(w, "  (not a Service frontend here, refused, lost to another Service, or inside --ipvs-exclude-cidrs: explain the Service by name to see why)\n")
			return nil
		}
		fmt.Fprintf(w, "%s is %s\n\n", fe.Frontend, fe.ServicePort)
	}
	fmt.Fprintf(w, "Service %s on node %s", s.Service, s.Node)
	if s.Zone != "" {
		fmt.Fprintf(w, " (zone %s)", s.Zone)
	}
	fmt.Fprintln(w)
	switch {
	case !s.Watched && !s.Applied:
		fmt.Fprintln(w, "  not known to nftvs: no such Service, or it carries service.kubernetes.io/service-proxy-name")
	case s.Ignored != "":
		fmt.Fprintf(w, "  not proxied: %s\n", s.Ignored)
	case s.Watched && !s.Applied:
		fmt.Fprintln(w, "  watched, not yet synced")
	}
	if len(s.Problems) > 0 {
		fmt.Fprintln(w, "\nNot programmed as asked (each a Warning Event on the Service):")
		for _, p := range s.Problems {
			fmt.Fprintf(w, "  %s\t%s\n", p.Reason, p.Message)
		}
	}
	for _, p := range s.Ports {
		fmt.Fprintf(w, "\nPort %s\n", p.Name)
		fmt.Fprintln(w, "  IPVS virtual servers (planned → kernel):")
		for _, vs := range p.VirtualServers {
			sched := vs.Scheduler
			if vs.Flags != "" {
				sched += " (" + vs.Flags + ")"
			}
			if vs.Persistent > 0 {
				sched += fmt.Sprintf(" persistent %d", vs.Persistent)
			}
			state := "not read"
			if k := vs.Kernel; k != nil {
				switch {
				case !k.Present:
					state = "MISSING from IPVS"
				default:
					state = "in IPVS: " + k.Scheduler
					if k.Flags != "" {
						state += " (" + k.Flags + ")"
					}
				}
				if k.Error != "" {
					state += ", " + k.Error
				}
			}
			fmt.Fprintf(w, "    %s\t%s\t%s\n", vs.Frontend, sched, state)
			kernel := map[string]KernelRealServer{}
			if vs.Kernel != nil {
				for _, r := range vs.Kernel.RealServers {
					kernel[r.Address] = r
				}
			}
			for _, r := range vs.RealServers {
				line := fmt.Sprintf("      -> %s\tweight %d", r.Address, r.Weight)
				if r.Draining {
					line += " (draining)"
				}
				if k, ok := kernel[r.Address]; ok {
					line += fmt.Sprintf("\tkernel weight %d, %d active, %d inactive", k.Weight, k.Active, k.Inactive)
					delete(kernel, r.Address)
				} else if vs.Kernel != nil && vs.Kernel.Present {
					line += "\tMISSING from IPVS"
				}
				fmt.Fprintln(w, line)
			}
			for _, k := range kernel {
				fmt.Fprintf(w, "      -> %s\tnot planned\tkernel weight %d, %d active, %d inactive\n", k.Address, k.Weight, k.Active, k.Inactive)
			}
			if len(vs.RealServers) == 0 {
				fmt.Fprintln(w, "      (no real server: see the endpoints below)")
			}
		}
		if len(p.Addresses) > 0 {
			var as []string
			for _, a := range p.Addresses {
				s := a.Address
				if a.OnDummy != nil && !*a.OnDummy {
					s += " (MISSING)"
				}
				as = append(as, s)
			}
			fmt.Fprintf(w, "  kube-ipvs0: %s\n", strings.Join(as, ", "))
		}
		fmt.Fprintln(w, "  nft elements (table inet nftvs):")
		for _, e := range p.Elements {
			state := ""
			switch {
			case e.InKernel == nil:
				state = "(not checked one for one)"
			case *e.InKernel:
				state = "in kernel"
				if e.Comment != "" {
					state += ", comment \"" + e.Comment + "\""
				}
			default:
				state = "MISSING from the kernel"
			}
			fmt.Fprintf(w, "    %s\t%s\t%s\n", e.Set, e.Element, state)
		}
		if p.HealthCheckNodePort > 0 {
			fmt.Fprintf(w, "  health check node port %d: %d local endpoints; answers %s\n", p.HealthCheckNodePort, p.LocalEndpoints, p.HealthCheck)
		}
		if p.ExternalNoLocal {
			fmt.Fprintln(w, "  externalTrafficPolicy Local without a local endpoint: traffic from outside is dropped")
		}
		if p.InternalNoLocal {
			fmt.Fprintln(w, "  internalTrafficPolicy Local without a local endpoint: traffic from this node's pods is dropped")
		}
	}
	if len(s.Endpoints) > 0 {
		fmt.Fprintln(w, "\nEndpoints (EndpointSlices):")
		for _, e := range s.Endpoints {
			cond := []string{}
			if e.Ready {
				cond = append(cond, "ready")
			}
			if e.Serving {
				cond = append(cond, "serving")
			}
			if e.Terminating {
				cond = append(cond, "terminating")
			}
			fmt.Fprintf(w, "  %s\tnode %s\t%s\tcarried by %d virtual servers, draining on %d", e.Address, orDash(e.Node), strings.Join(cond, ","), e.Carried, e.Draining)
			if e.Why != "" {
				fmt.Fprintf(w, "\t%s", e.Why)
			}
			fmt.Fprintln(w)
		}
	}
	if s.DummyAddresses != nil || s.KernelErrors != nil || len(s.Ports) > 0 {
		fmt.Fprintf(w, "\nConntrack entries to its frontends: %d\n", len(s.Conntrack))
		for i, f := range s.Conntrack {
			if i == 20 {
				fmt.Fprintf(w, "  ... %d more (-o json lists them all)\n", len(s.Conntrack)-20)
				break
			}
			fmt.Fprintf(w, "  %s\n", f)
		}
	}
	for _, e := range s.KernelErrors {
		fmt.Fprintf(w, "\nkernel read failed: %s\n", e)
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
