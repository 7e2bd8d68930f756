// Command egress-proxy is the API server's way into the node's networks in
// e2e/node: an HTTP CONNECT proxy that runs on the node (in the VM) and
// that kube-apiserver's egress selector ("cluster" egress, HTTPConnect over
// TCP) dials for everything it sends to nodes, pods and services — kubelet
// exec/logs and the pods/proxy and services/proxy subresources that
// upstream's e2e tests use (e2epod.VerifyPods asks each pod for a
// response through pods/proxy).
//
// In a real cluster the control plane routes to pod IPs; here it runs on
// the host behind qemu's user network, which forwards single ports into
// the guest but cannot route a pod CIDR. Managed Kubernetes offerings
// solve the same problem with konnectivity; this is its simplest form:
// one CONNECT per connection, no TLS (the link is a qemu hostfwd inside
// the run's private network namespace).
package main

import (
	"bufio"
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"time"
)

func main() {
	listen := flag.String("listen", ":8131", "address to serve CONNECT on")
	flag.Parse()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("egress-proxy: serving CONNECT on %s", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go serve(c)
	}
}

// serve answers one CONNECT and then copies bytes both ways until either
// side closes.
func serve(c net.Conn) {
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		log.Printf("egress-proxy: %s: reading request: %v", c.RemoteAddr(), err)
		return
	}
	if req.Method != http.MethodConnect {
		io.WriteString(c, "HTTP/1.1 405 Method Not Allowed\r\nConnection: close\r\n\r\n")
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	target, err := net.DialTimeout("tcp", req.Host, 10*time.Second)
	if err != nil {
		log.Printf("egress-proxy: CONNECT %s: %v", req.Host, err)
		io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n")
		return
	}
	defer target.Close()
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	pipe := func(dst net.Conn, src io.Reader) {
		_, _ = io.Copy(dst, src)
		// Half-close so the other direction can finish its reply.
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(target, br) // br: any bytes the client sent after the CONNECT head
	go pipe(c, target)
	<-done
	<-done
}
