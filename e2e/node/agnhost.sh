# agnhost.sh, sourced by e2e/node/images.sh and e2e/cluster/images.sh:
# agnhost_recipe BIN COREDNS sets the array agnhost to the recipe (arguments of
# e2e/tools/images) of registry.k8s.io/e2e-test-images/agnhost:2.63.0:
# upstream agnhost (BIN/agnhost) at the version k8s.io/kubernetes
# v1.36.3's e2e tests name, with what the tests exec in it, as upstream's
# Alpine-based image has it: nc (netcat-openbsd), curl, wget, ss and ip
# (iproute2), dig, nslookup and host (bind-tools), getent (the DNS
# tests' agnhost prober runs `getent hosts`; Alpine has it in
# musl-utils), bash, busybox for the rest, and in / (the working
# directory) the key pair of test/images/agnhost/porter, as upstream's
# Dockerfile adds it: porter serves TLS with it (the Proxy [Conformance]
# test's https ports failed without), and /coredns (COREDNS, the cluster
# DNS's build; upstream's Dockerfile adds CoreDNS 1.6.2): the DNS
# configMap tests run their stub-domain and upstream servers as
# `/coredns -conf ...` in this image, and iperf (iperf 2, as upstream's
# apk adds it: the IPerf2 test's server and clients run `iperf`). /bin/sh is bash, not
# busybox: Debian's static busybox sh runs its own applets before PATH
# (FEATURE_SH_STANDALONE), so `sh -c 'nc -v ...'` would get busybox nc,
# which has no -v. wget is GNU wget: bookworm's static busybox wget dies
# of SIGSEGV when given -T (a timeout), which every "service is up" check
# of the Services tests passes (`wget -q -O - -T 1 http://IP:PORT`).
agnhost_recipe() {
  agnhost=(-name registry.k8s.io/e2e-test-images/agnhost:2.63.0
    -add "$1/agnhost:/agnhost" -add "$(command -v nc.openbsd):/usr/bin/nc"
    -add "$(command -v curl):/usr/bin/curl" -add "$(command -v wget):/usr/bin/wget"
    -add "$(command -v ss):/usr/bin/ss"
    -add "$(command -v dig):/usr/bin/dig" -add "$(command -v nslookup):/usr/bin/nslookup"
    -add "$(command -v host):/usr/bin/host" -add "$(command -v getent):/usr/bin/getent"
    -add "$(command -v ip):/sbin/ip" -add /bin/bash:/bin/bash -add /bin/bash:/bin/sh
    -add "$1/localhost.crt:/localhost.crt" -add "$1/localhost.key:/localhost.key"
    -add "$2:/coredns" -add "$(command -v iperf):/usr/bin/iperf"
    -busybox /bin/busybox -dir /tmp
    -entrypoint /agnhost -cmd pause)
}
