#!/usr/bin/env bash
# fetch-kernel.sh [RELEASE]: fetch Debian's stock amd64 kernel for RELEASE
# (bullseye 5.10, bookworm 6.1 (default), trixie 6.12) and unpack it into
# ${NFTVS_CACHE:-/var/cache/nftvs}/kernels/RELEASE/, which it prints:
#   vmlinuz             the kernel as Debian ships it (compressed bzImage)
#   vmlinux             the same kernel uncompressed, which qemu boots
#                       through its PVH entry point: under software
#                       emulation this skips ~4 s of xz decompression
#   config              its build configuration (to check CONFIG_* by hand)
#   version             the module directory name, e.g. 6.1.0-56-amd64
#   package             the .deb it came from
#   lib/modules/VER/    plain .ko files plus modules.dep, mounted at
#                       /lib/modules inside the guest
# A second call finds the cache complete and returns at once. Delete the
# directory to pick up a newer kernel.
set -euo pipefail

here=$(dirname "$(readlink -f "$0")")
# shellcheck source=SCRIPTDIR/lib.sh
. "$here/lib.sh"

release=${1:-bookworm}
check_release "$release"
dest=$NFTVS_CACHE/kernels/$release

# Fast path without taking the lock: the marker is written last, after an
# atomic rename, so seeing it means the tree is whole.
if [ -f "$dest/.complete" ]; then
  echo "$dest"
  exit 0
fi

# The mirror the system already uses, so the VM's kernels come from the
# same place as every other package. deb822 sources first, then the
# one-line format, then Debian's own redirector.
debian_mirror() {
  local uri
  uri=$(awk '
      /^[[:space:]]*$/ { if (u != "" && s !~ /-security/) { print u; exit } u = ""; s = ""; next }
      /^URIs:/ { u = $2 } /^Suites:/ { s = $0 }
      END { if (u != "" && s !~ /-security/) print u }
    ' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1 == "deb" && $0 !~ /-security/ {
        for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list | head -n 1)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

# extract_vmlinux BZIMAGE OUT: find the compressed kernel inside a bzImage
# by its magic bytes and decompress it (as the kernel's own
# scripts/extract-vmlinux does). bookworm and bullseye use xz, trixie zstd.
# The decompressors complain about the bytes after the stream; what counts
# is whether an ELF file came out.
extract_vmlinux() {
  local bz=$1 out=$2 pair pat tool off
  for pair in 'fd377a585a00:xz -dcq' '28b52ffd:zstd -dcq' '1f8b08:gzip -dcq'; do
    # "fd37..." -> "\xfd\x37...", a grep -P byte pattern.
    # shellcheck disable=SC2001
    pat=$(sed 's/../\\x&/g' <<<"${pair%%:*}")
    tool=${pair#*:}
    # shellcheck disable=SC2013 # byte offsets, one word each
    for off in $(LC_ALL=C grep -obUaP "$pat" "$bz" | cut -d: -f1); do
      tail -c +$((off + 1)) "$bz" | $tool >"$out" 2>/dev/null || true
      [ "$(head -c 4 "$out" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] && return 0
    done
  done
  rm -f "$out"
  return 1
}

fetch() {
  # Another run may have finished while this one waited for the lock.
  [ -f "$dest/.complete" ] && return 0
  need apt-get=apt dpkg-deb=dpkg depmod=kmod xz=xz-utils flock=util-linux

  local work host_codename
  work=$(mktemp -d "$NFTVS_CACHE/kernels/.$release.XXXXXX")
  # shellcheck disable=SC2064 # expand $work now: it is local.
  trap "rm -rf '$work'" EXIT
  # apt fetches as the unprivileged _apt user; mktemp made $work private.
  chmod 755 "$work"

  # The system's own apt setup can name the kernel of the release it runs.
  # Any other release gets a private sources list, list directory and
  # cache inside $work, so the system's apt configuration and state are
  # never touched.
  host_codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  local apt_opts=()
  if [ "$release" != "$host_codename" ]; then
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg signed=
    [ -f "$keyring" ] && signed="[signed-by=$keyring] "
    mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial"
    if id _apt >/dev/null 2>&1; then chown _apt "$work/apt/lists/partial"; fi
    echo "deb $signed$(debian_mirror) $release main" >"$work/apt/sources.list"
    apt_opts=(
      -o "Dir::Etc::sourcelist=$work/apt/sources.list"
      -o "Dir::Etc::sourceparts=-"
      -o "Dir::State::Lists=$work/apt/lists"
      -o "Dir::Cache=$work/apt/cache"
      -o "Acquire::Languages=none"
    )
    log "$release: reading the package list from $(debian_mirror)"
    apt-get "${apt_opts[@]}" update -qq >&2
  fi

  # linux-image-amd64 is the metapackage; it depends on the current
  # versioned image, e.g. linux-image-6.1.0-56-amd64.
  local pkg
  kernel_package() {
    apt-cache "${apt_opts[@]}" depends linux-image-amd64 2>/dev/null |
      awk '$1 == "Depends:" && $2 ~ /^<?linux-image-[0-9]/ { gsub(/[<>]/, "", $2); print $2; exit }'
  }
  pkg=$(kernel_package)
  if [ -z "$pkg" ] && [ ${#apt_opts[@]} -eq 0 ]; then
    # A fresh machine may have empty package lists.
    apt-get update -qq >&2
    pkg=$(kernel_package)
  fi
  [ -n "$pkg" ] || die "$release: apt knows no linux-image-amd64"

  log "$release: downloading $pkg"
  mkdir -p "$work/deb"
  if id _apt >/dev/null 2>&1; then chown _apt "$work/deb"; fi
  (cd "$work/deb" && apt-get "${apt_opts[@]}" download -qq "$pkg" >&2)
  local deb
  deb=$(ls "$work/deb"/*.deb)

  log "$release: unpacking $(basename "$deb")"
  dpkg-deb -x "$deb" "$work/root"

  # bookworm and bullseye ship lib/modules, trixie usr/lib/modules.
  local moddir ver
  moddir=
  for d in "$work/root/lib/modules"/* "$work/root/usr/lib/modules"/*; do
    [ -d "$d" ] && moddir=$d && break
  done
  [ -n "$moddir" ] || die "$release: no modules directory in $deb"
  ver=$(basename "$moddir")

  local stage=$work/stage
  mkdir -p "$stage/lib/modules"
  mv "$moddir" "$stage/lib/modules/$ver"
  cp "$work/root/boot/vmlinuz-$ver" "$stage/vmlinuz"
  cp "$work/root/boot/config-$ver" "$stage/config"
  echo "$ver" >"$stage/version"
  # qemu boots an ELF kernel directly only through the PVH entry point.
  if grep -q '^CONFIG_PVH=y' "$stage/config"; then
    need zstd=zstd
    extract_vmlinux "$stage/vmlinuz" "$stage/vmlinux" ||
      log "$release: could not extract vmlinux; the VM will boot the slower vmlinuz"
  fi
  basename "$deb" >"$stage/package"

  # trixie compresses modules (.ko.xz). busybox modprobe in the initramfs
  # cannot read them, so store everything plain.
  local m=$stage/lib/modules/$ver
  if [ -n "$(find "$m" -name '*.ko.xz' -print -quit)" ]; then
    log "$release: decompressing .ko.xz modules"
    find "$m" -name '*.ko.xz' -print0 | xargs -0 -r -n 200 -P "$(nproc)" xz -d
  fi
  if [ -n "$(find "$m" -name '*.ko.zst' -print -quit)" ]; then
    need zstd=zstd
    log "$release: decompressing .ko.zst modules"
    find "$m" -name '*.ko.zst' -print0 | xargs -0 -r -n 200 -P "$(nproc)" zstd -d -q --rm
  fi
  # modules.order (used by depmod for ordering) may still name the
  # compressed files.
  [ -f "$m/modules.order" ] && sed -i -E 's/\.ko\.(xz|zst)$/.ko/' "$m/modules.order"

  # The package ships no modules.dep; the postinst would run depmod.
  depmod -b "$stage" "$ver"

  echo "$pkg" >"$stage/.complete"
  rm -rf "$dest"
  mv "$stage" "$dest"
  log "$release: kernel $ver ready in $dest"
}

mkdir -p "$NFTVS_CACHE/kernels"
with_lock "$NFTVS_CACHE/kernels/.$release.lock" fetch
echo "$dest"
