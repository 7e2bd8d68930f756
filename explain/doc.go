// Package explain is `nftvs explain`: everything nftvs did for one
// Service on this node, and why anything asked for is missing. It changes
// nothing.
//
// Two halves meet in one answer:
//   - the running nftvs serves its own view (Server, on a unix socket
//     only root in the pod can open): the Service's plan as last applied,
//     its problems with their Event reasons, its EndpointSlices'
//     endpoints and which virtual servers carry them. It is read from the
//     proxier's published view, never under the sync lock;
//   - the explain command (Run, in the same pod through kubectl exec)
//     asks for that view and reads the kernel beside it: each virtual
//     server as IPVS has it (scheduler, flags, real servers with weights
//     and live connection counts), kube-ipvs0's addresses, each nft
//     element in the kernel's set with its comment, the health check node
//     port's answer, the conntrack entries of the Service's frontends.
//
// Text by default, JSON with -o json.
package explain
