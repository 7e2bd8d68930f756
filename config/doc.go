// Package config is nftvs's configuration, as kube-proxy's
// pkg/proxy/apis/config and its validation are kube-proxy's: the flags
// (kube-proxy 1.36's, with kube-proxy's names and defaults, and nftvs's
// own), the KubeProxyConfiguration file (decoding, defaults), the feature
// gates, and validation (Complete). Validation parses each address and
// CIDR once (Addresses); Resolve then turns the configuration and the
// node's facts (its Node, whether the kernel has IPv6, the API server's
// addresses) into the configuration of every layer: the families
// proxied, the nftables table's nft.Config, the node port addresses and
// the proxier's proxier.Config, whole.
//
// As in kube-proxy, a --config file replaces the configuration flags:
// only --hostname-override and the logging flags override the file (the
// others are reported as ignored). Flags of other modes (iptables-*, ...)
// are accepted and reported as not applying.
//
// It reads the configuration file and the Node it is handed; it never
// touches the kernel or the API server.
package config
