package app

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"

	"github.com/nftvs/nftvs/internal/kubeclient"
	"github.com/nftvs/nftvs/internal/version"
	"github.com/nftvs/nftvs/ipvs"
)

// newClient builds the API client as kube-proxy does: in-cluster
// configuration unless a kubeconfig or master is given.
// The API server's addresses are those of the host in its URL, unless
// the in-cluster configuration is used: its host is the kubernetes
// Service's ClusterIP, which kube-ipvs0 holds on purpose.
func newClient(c v1alpha1.KubeProxyConfiguration, master string) (*kubeclient.Client, []netip.Addr, error) {
	var (
		rc        *rest.Config
		err       error
		inCluster bool
	)
	cc := c.ClientConnection
	if cc.Kubeconfig == "" && master == "" {
		klog.InfoS("Neither kubeconfig file nor master URL was specified, falling back to in-cluster config")
		rc, err = rest.InClusterConfig()
		inCluster = true
	} else {
		rc, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
			&clientcmd.ClientConfigLoadingRules{ExplicitPath: cc.Kubeconfig},
			&clientcmd.ConfigOverrides{ClusterInfo: clientcmdapi.Cluster{Server: master}}).ClientConfig()
	}
	if err != nil {
		return nil, nil, fmt.Errorf("API server client configuration: %w", err)
	}
	var api []netip.Addr
	if !inCluster {
		api = serverAddresses(rc.Host)
	}
	rc.AcceptContentTypes = cc.AcceptContentTypes
	rc.ContentType = cc.ContentType
	rc.QPS = cc.QPS
	rc.Burst = int(cc.Burst)
	rc.UserAgent = "nftvs/" + version.Get()
	client, err := kubeclient.NewForConfig(rc)
	if err != nil {
		return nil, nil, fmt.Errorf("API server client: %w", err)
	}
	return client, api, nil
}

// serverAddresses are the addresses of the host of an API server URL: the
// host itself when it is an IP, else what it resolves to (within 2 s).
func serverAddresses(server string) []netip.Addr {
	u, err := url.Parse(server)
	if err != nil || u.Hostname() == "" {
		return nil
	}
	if ip, err := netip.ParseAddr(u.Hostname()); err == nil {
		return []netip.Addr{ip.Unmap()}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", u.Hostname())
	if err != nil {
		klog.InfoS("Could not resolve the API server's host; its addresses are not protected from Services", "host", u.Hostname(), "err", err)
		return nil
	}
	for i := range ips {
		ips[i] = ips[i].Unmap()
	}
	return ips
}

// freeAPIServerAddresses removes the API server's addresses from
// kube-ipvs0 before nftvs first connects to it. A Service that claimed
// one (before nftvs refused such Services) left the node unable to reach
// its API server, and so nftvs unable to undo it.
func freeAPIServerAddresses(api []netip.Addr) {
	if len(api) == 0 {
		return
	}
	addrs, err := ipvs.NewNetlinkAddresses("")
	if err != nil {
		klog.ErrorS(err, "Checking kube-ipvs0 for the API server's address")
		return
	}
	defer addrs.Close()
	removed, err := addrs.RemoveAddresses(ipvs.DummyName, api)
	if err != nil {
		klog.ErrorS(err, "Removing the API server's address from kube-ipvs0")
	}
	if len(removed) > 0 {
		klog.InfoS("Removed the API server's address from kube-ipvs0, where a Service had put it", "addresses", removed)
	}
}
