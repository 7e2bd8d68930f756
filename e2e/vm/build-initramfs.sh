#!/usr/bin/env bash
# build-initramfs.sh [RELEASE]: build the VM's initramfs for RELEASE's kernel
# and print its path: static busybox, init.sh as /init, and the few modules
# stage 1 of init.sh loads (with their dependencies). It is cached next to
# the kernel, keyed by the hash of its inputs, so editing init.sh rebuilds
# it on the next run.
set -euo pipefail

here=$(dirname "$(readlink -f "$0")")
# shellcheck source=SCRIPTDIR/lib.sh
. "$here/lib.sh"

release=${1:-bookworm}
check_release "$release"
kdir=$("$here/fetch-kernel.sh" "$release")
ver=$(cat "$kdir/version")

# What stage 1 of init.sh loads from the initramfs.
INITRD_MODULES="crc32c_generic virtio_pci 9pnet_virtio 9p overlay"

need busybox=busybox-static cpio=cpio gzip=gzip modprobe=kmod depmod=kmod flock=util-linux
busybox=$(command -v busybox)
# The initramfs has no libc: a dynamic busybox (Debian's "busybox"
# package) would not start.
if ldd "$busybox" >/dev/null 2>&1; then
  die "$busybox is dynamically linked; install busybox-static"
fi

key=$(cat "$here/init.sh" "$here/build-initramfs.sh" "$busybox" "$kdir/.complete" |
  sha256sum | cut -c1-12)
out=$kdir/initrd-$key.cpio.gz

build() {
  [ -f "$out" ] && return 0
  local stage
  stage=$(mktemp -d)
  # shellcheck disable=SC2064 # expand $stage now: it is local.
  trap "rm -rf '$stage'" EXIT
  mkdir -p "$stage/bin" "$stage/lib/modules/$ver"
  cp "$busybox" "$stage/bin/busybox"
  cp "$here/init.sh" "$stage/init"
  chmod 755 "$stage/init"

  # modprobe --show-depends lists each module after its dependencies,
  # "insmod PATH" for a module file, "builtin NAME" for one built in.
  local m line path
  for m in $INITRD_MODULES; do
    if ! modprobe -d "$kdir" -S "$ver" --show-depends "$m" >"$stage/deps" 2>&1; then
      log "$release: initramfs: no module $m ($(head -n 1 "$stage/deps"))"
      continue
    fi
    while read -r line; do
      case $line in
        insmod\ *)
          path=${line#insmod }
          path=${path%% *}
          path=${path#"$kdir/lib/modules/$ver/"}
          mkdir -p "$stage/lib/modules/$ver/$(dirname "$path")"
          cp "$kdir/lib/modules/$ver/$path" "$stage/lib/modules/$ver/$path"
          ;;
      esac
    done <"$stage/deps"
  done
  rm -f "$stage/deps"
  local f
  for f in modules.builtin modules.builtin.modinfo; do
    [ -f "$kdir/lib/modules/$ver/$f" ] && cp "$kdir/lib/modules/$ver/$f" "$stage/lib/modules/$ver/"
  done
  (cd "$stage/lib/modules/$ver" && find kernel -name '*.ko' | sort >modules.order)
  # busybox modprobe resolves dependencies from modules.dep.
  depmod -b "$stage" "$ver"

  (cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$out.tmp"
  mv "$out.tmp" "$out"
  # Images built from older inputs are dead weight. vmexec links the
  # image into its run directory at once, so deleting one in use is safe.
  find "$kdir" -maxdepth 1 -name 'initrd-*.cpio.gz' ! -path "$out" -delete
  log "$release: built $out"
}

with_lock "$kdir/.initrd.lock" build
echo "$out"
