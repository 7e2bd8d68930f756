# shellcheck shell=bash
# Shared helpers for the VM harness scripts. Sourced, never executed.

# NFTVS_CACHE holds kernels and initramfs images. It lives outside the git
# tree on purpose: a kernel with its modules is hundreds of megabytes.
NFTVS_CACHE=${NFTVS_CACHE:-/var/cache/nftvs}

# The Debian releases whose stock kernels the harness knows how to boot.
NFTVS_RELEASES="bullseye bookworm trixie"

log() { printf 'nftvs-vm: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

check_release() {
  case " $NFTVS_RELEASES " in
    *" $1 "*) ;;
    *) die "unknown release '$1' (want one of: $NFTVS_RELEASES)" ;;
  esac
}

# need CMD=PACKAGE ...: install the Debian packages whose commands are
# missing. A fresh machine gets one apt-get update per script run; a machine
# that has everything never touches apt. The lock timeout lets two runs that
# both install at once wait for each other instead of failing.
_apt_updated=
need() {
  local pair cmd pkg missing=()
  for pair in "$@"; do
    cmd=${pair%%=*} pkg=${pair#*=}
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing packages ${missing[*]} (install them as root)"
  log "installing ${missing[*]}"
  if [ -z "$_apt_updated" ]; then
    apt-get -o DPkg::Lock::Timeout=300 update -qq >&2
    _apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 \
    install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# with_lock FILE CMD...: run CMD holding an exclusive flock on FILE, so
# concurrent runs never build the same cache entry twice or half-read it.
with_lock() {
  local file=$1; shift
  mkdir -p "$(dirname "$file")"
  (
    flock 9
    "$@"
  ) 9>"$file"
}
