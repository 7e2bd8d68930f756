package explain

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/nftvs/nftvs/conntrack"
	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/nft"
)

// Kernel is what the explain command reads of the kernel; every call
// only reads.
type Kernel interface {
	VirtualServers() ([]ipvs.VirtualServer, error)
	RealServers(ipvs.VSKey) ([]ipvs.RealServer, map[netip.AddrPort]ipvs.Connections, error)
	DummyAddresses() ([]netip.Addr, error)
	Elements([]nft.Element) ([]nft.ElementState, error)
	Conntrack(frontends []netip.AddrPort) ([]conntrack.Flow, error)
	// HealthCheck is the health check node port's answer: status and
	// body.
	HealthCheck(port int) (string, error)
}

// Run is `nftvs explain [-o text|json] [--socket PATH] TARGET`: TARGET is
// namespace/name or address:port[/protocol].
func Run(ctx context.Context, args []string, out io.Writer, newKernel func() (Kernel, error)) error {
	fs := pflag.NewFlagSet("explain", pflag.ContinueOnError)
	output := fs.StringP("output", "o", "text", "Output format: text or json.")
	socket := fs.String("socket", DefaultSocket, "The running nftvs's explain socket (--explain-socket).")
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: nftvs explain [flags] namespace/name | address:port[/protocol]\n\n"+
			"Everything nftvs did for one Service on this node, and why anything asked for is missing.\n"+
			"Run it in the nftvs pod (kubectl exec). It reads; it changes nothing.\n\n%s", fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errors.New("explain: one namespace/name or address:port, please")
	}
	if *output != "text" && *output != "json" {
		return fmt.Errorf("explain: -o %q: text or json", *output)
	}
	svcName, frontend, err := ParseTarget(fs.Arg(0))
	if err != nil {
		return fmt.Errorf("explain: %w", err)
	}
	c := client(*socket)
	var fe *Frontend
	if frontend.Address.IsValid() {
		var f Frontend
		if err := get(ctx, c, "/v1/frontends/"+string(frontend.Protocol)+"/"+url.PathEscape(netip.AddrPortFrom(frontend.Address, frontend.Port).String()), &f); err != nil {
			return err
		}
		fe = &f
		if f.Service == "" {
			return render(out, *output, fe, nil)
		}
		ns, name, _ := strings.Cut(f.Service, "/")
		svcName.Namespace, svcName.Name = ns, name
	}
	var s Service
	if err := get(ctx, c, "/v1/services/"+url.PathEscape(svcName.Namespace)+"/"+url.PathEscape(svcName.Name), &s); err != nil {
		return err
	}
	k, err := newKernel()
	if err != nil {
		s.KernelErrors = append(s.KernelErrors, err.Error())
	} else {
		ReadKernel(&s, k)
	}
	return render(out, *output, fe, &s)
}

func client(socket string) *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}},
	}
}

func get(ctx context.Context, c *http.Client, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://nftvs"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("explain: ask the running nftvs (is this its pod, and --explain-socket set?): %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("explain: nftvs answered %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("explain: decode nftvs's answer: %w", err)
	}
	return nil
}

// ReadKernel fills the kernel's side of s from k. A read that fails is
// recorded in s.KernelErrors; the others go on.
func ReadKernel(s *Service, k Kernel) {
	fail := func(what string, err error) {
		s.KernelErrors = append(s.KernelErrors, fmt.Sprintf("%s: %v", what, err))
	}
	vss, err := k.VirtualServers()
	if err != nil {
		fail("IPVS virtual servers", err)
	}
	inKernel := map[ipvs.VSKey]ipvs.VirtualServer{}
	for _, v := range vss {
		inKernel[v.Key()] = v
	}
	dummy, err := k.DummyAddresses()
	if err != nil {
		fail(ipvs.DummyName, err)
	}
	for _, a := range dummy {
		s.DummyAddresses = append(s.DummyAddresses, a.String())
	}
	var frontends []netip.AddrPort
	for pi := range s.Ports {
		p := &s.Ports[pi]
		for vi := range p.VirtualServers {
			vs := &p.VirtualServers[vi]
			kv := &KernelVirtualServer{}
			vs.Kernel = kv
			if vs.Key.FWMark == 0 {
				frontends = append(frontends, netip.AddrPortFrom(vs.Key.Address, vs.Key.Port))
			}
			got, ok := inKernel[vs.Key.Key()]
			if !ok {
				continue
			}
			kv.Present, kv.Scheduler, kv.Flags = true, got.Scheduler, ipvs.SchedulerFlagsString(got.Scheduler, got.Flags)
			if got.Flags&ipvs.FlagPersistent != 0 {
				kv.Flags = strings.Trim("persistent,"+kv.Flags, ",")
			}
			rss, conns, err := k.RealServers(vs.Key)
			if err != nil {
				kv.Error = err.Error()
				continue
			}
			for _, r := range rss {
				c := conns[r.AddrPort()]
				kv.RealServers = append(kv.RealServers, KernelRealServer{Address: r.AddrPort().String(), Weight: r.Weight, Active: c.Active, Inactive: c.Inactive})
			}
		}
		for ai := range p.Addresses {
			a, err := netip.ParseAddr(p.Addresses[ai].Address)
			on := err == nil && slices.Contains(dummy, a)
			p.Addresses[ai].OnDummy = &on
		}
		if p.HealthCheckNodePort > 0 {
			ans, err := k.HealthCheck(p.HealthCheckNodePort)
			if err != nil {
				ans = "no answer: " + err.Error()
			}
			p.HealthCheck = ans
		}
	}
	var want []nft.Element
	for _, p := range s.Ports {
		for _, e := range p.Elements {
			want = append(want, e.Key)
		}
	}
	states, err := k.Elements(want)
	if err != nil {
		fail("nftables", err)
	}
	i := 0
	for pi := range s.Ports {
		for ei := range s.Ports[pi].Elements {
			if i < len(states) && states[i].Checked {
				in := states[i].InKernel
				s.Ports[pi].Elements[ei].InKernel = &in
				s.Ports[pi].Elements[ei].Comment = states[i].Comment
			}
			i++
		}
	}
	flows, err := k.Conntrack(frontends)
	if err != nil {
		fail("conntrack", err)
	}
	s.Conntrack = flows
}
