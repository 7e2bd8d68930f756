#!/bin/busybox sh
# shellcheck shell=dash # busybox ash: POSIX sh plus local
# /init of the nftvs test VM. It runs twice, both times as PID 1:
#
#   stage 1 (in the initramfs): load just enough modules to reach the host's
#   root filesystem over 9p, stack a tmpfs on it with overlayfs so the guest
#   can write anywhere, then switch_root into it.
#
#   stage 2 (in the host's root, now the guest's): mount the kernel's module
#   tree and the per-run shares, load the modules the tests need, run the
#   one requested command with its output on ttyS1, store its exit status
#   in the run share and power off.
#
# vmexec describes the run in files of the writable "nftvsrun" share,
# mounted at /run/nftvs: config (shell variables), mounts and cmd (the
# command, its directory and environment); this script writes status and
# modules.log there.
# The console (ttyS0) becomes console.log on the host; nothing here may
# write to ttyS1 but the command, whose output the host streams verbatim.

BB=/bin/busybox
say() { echo "nftvs-init: [$(cut -d" " -f1 /proc/uptime 2>/dev/null)] $*"; }
halt_now() {
  sync
  $BB poweroff -f
  echo o >/proc/sysrq-trigger
  sleep 10
}
fail() { say "FATAL: $*"; halt_now; }

# Shares from the host, all 9p over virtio. The largest message size the
# virtio transport takes cuts the number of round trips per read.
P9OPTS=trans=virtio,version=9p2000.L,msize=262144

stage1() {
  $BB mkdir -p /bin /proc /sys /dev /lower /rw /newroot
  $BB --install -s /bin
  export PATH=/bin
  mount -t proc proc /proc
  mount -t sysfs sysfs /sys
  mount -t devtmpfs devtmpfs /dev

  # busybox modprobe ignores softdeps: libcrc32c (pulled in later by
  # nf_conntrack and ip_vs) needs crc32c loaded first.
  for m in crc32c_generic virtio_pci 9pnet_virtio 9p overlay; do
    modprobe "$m" || say "module $m: not loaded (built in or missing?)"
  done

  say "mounting the host root"
  mount -t 9p -o "$P9OPTS,ro,cache=loose" hostroot /lower || fail "cannot mount the host root (9p tag hostroot)"
  # tmpfs as the upper layer: the guest may write anywhere, nothing reaches
  # the host, and the host's /tmp (where go test leaves its binaries) stays
  # visible, which a tmpfs mounted over /tmp would hide.
  mount -t tmpfs -o mode=755 tmpfs /rw
  mkdir -p /rw/upper /rw/work
  mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot ||
    fail "cannot mount the overlay root"

  # A fresh /run: the host's (netns names, pid files) must not leak in.
  mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /newroot/run
  mkdir -p /newroot/run/nftvs /newroot/run/nftvs-init
  mount -t 9p -o "$P9OPTS" nftvsrun /newroot/run/nftvs || fail "cannot mount the run share (9p tag nftvsrun)"
  # switch_root empties the initramfs: keep this script and busybox.
  cp /init /bin/busybox /newroot/run/nftvs-init/

  for d in proc sys dev; do mount --move "/$d" "/newroot/$d"; done
  # shellcheck disable=SC2093 # exec returns only if switch_root fails
  exec switch_root /newroot /run/nftvs-init/busybox sh /run/nftvs-init/init stage2
  fail "switch_root failed"
}

# The modules the tests need. Most would autoload on first use; loading
# them up front makes a missing one show in modules.log, not as an odd
# netlink error in a test.
MODULES="
  ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_sh ip_vs_dh ip_vs_sed ip_vs_nq ip_vs_mh
  nf_conntrack nf_conntrack_netlink nf_nat
  nf_tables nft_ct nft_fib nft_fib_inet nft_fib_ipv4 nft_fib_ipv6 nft_masq nft_nat
  nft_reject nft_reject_inet nft_chain_nat
  dummy veth sctp bridge br_netfilter
"

load_modules() {
  # Under software emulation every process costs ~0.1 s, so one modprobe
  # loads them all; the per-module report below uses shell builtins, and
  # a second modprobe only runs for a module that did not load, to log why.
  # The host's kmod modprobe honours softdeps and reads any module format;
  # busybox's is the fallback for a host without kmod.
  local modprobe="$BB modprobe" m how builtin
  [ -x /sbin/modprobe ] && modprobe=/sbin/modprobe
  builtin=$(cat "/lib/modules/$(uname -r)/modules.builtin" 2>/dev/null)
  # shellcheck disable=SC2086 # word lists
  $modprobe -a crc32c_generic $MODULES $NFTVS_VM_MODULES 2>/dev/null
  for m in crc32c_generic $MODULES $NFTVS_VM_MODULES; do
    case "
$builtin
" in
      */$m.ko"
"*) how=builtin ;;
      *)
        if [ -d "/sys/module/$m" ]; then
          how=loaded
        elif $modprobe "$m" 2>/run/nftvs/modprobe.err; then
          how=loaded
        else
          how="MISSING: $(cat /run/nftvs/modprobe.err)"
          say "module $m: $how"
        fi
        ;;
    esac
    echo "$m: $how" >>/run/nftvs/modules.log
  done
  rm -f /run/nftvs/modprobe.err
}

stage2() {
  export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  [ -f /run/nftvs/config ] || fail "no /run/nftvs/config from vmexec"
  # shellcheck disable=SC1091 # written by vmexec
  . /run/nftvs/config

  mkdir -p /dev/pts /dev/shm
  mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
  mount -t tmpfs -o mode=1777 tmpfs /dev/shm
  $BB hostname nftvs-vm

  # The unpacked kernel's modules, for modprobe here and for the kernel's
  # own autoloading (it calls /sbin/modprobe, the host's kmod).
  mkdir -p /lib/modules
  mount --bind "$NFTVS_MODULES" /lib/modules || fail "cannot bind $NFTVS_MODULES to /lib/modules"

  # Host directories the command must write to (go test's work dir, for
  # coverage and profiles), each its own writable share at the same path.
  local tag path
  while read -r tag path; do
    [ -n "$tag" ] || continue
    mkdir -p "$path"
    mount -t 9p -o "$P9OPTS" "$tag" "$path" || fail "cannot mount share $tag at $path"
  done </run/nftvs/mounts

  say "loading modules"
  load_modules
  say "modules loaded"
  ip link set lo up || $BB ip link set lo up

  if [ "${NFTVS_VM_APISERVER:-0}" = 1 ]; then
    # qemu's user network, restricted to one forward: 10.0.2.100:6443 in
    # the guest is 127.0.0.1:6443 on the host.
    modprobe virtio_net
    if ! ip link set eth0 up || ! ip addr add 10.0.2.15/24 dev eth0; then
      fail "cannot configure eth0"
    fi
  fi

  # Raw mode: no \n -> \r\n rewriting, the host sees the bytes as written.
  $BB stty -F /dev/ttyS1 raw -echo || fail "cannot set up ttyS1"
  say "running the command"
  # A subshell owns the tty; when it exits, closing the tty waits until
  # every byte has left the serial port, so nothing is cut off by poweroff.
  (exec env -i /bin/sh /run/nftvs/cmd </dev/null >/dev/ttyS1 2>&1)
  echo $? >/run/nftvs/status
  say "command done"
  halt_now
}

case "${1:-stage1}" in
  stage2) stage2 ;;
  *) stage1 ;;
esac
