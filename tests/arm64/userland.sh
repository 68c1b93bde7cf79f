#!/usr/bin/env bash
# An emulated Raspberry Pi 4 userland (Debian bookworm arm64, Python 3.11) for the arm64 tests.
#
#   userland.sh build EDGE_REQUIREMENTS TFLITE_REQUIREMENTS   print the cached root folder, building it once
#   userland.sh run   EDGE_REQUIREMENTS TFLITE_REQUIREMENTS RUN_DIR -- COMMAND...
#                     run COMMAND inside it: the working tree read-only at /src, RUN_DIR at /case
#
# The root is built once per set of inputs (this script, its cpuinfo and both requirement files) under
# ${XDG_CACHE_HOME:-~/.cache}/gridedge/arm64-<key>: /opt/edge is a venv with the edge requirements (a
# profile's pins) and pytest, /opt/tflite214 one with numpy<2 and tflite-runtime 2.14. gridedge itself is
# never installed there: each run brings the working tree's own.
#
# The Debian mirror is the one this machine's apt uses (or GRIDEDGE_DEBIAN_MIRROR): nothing here names a host.
# Two traps of qemu-user, both measured: its default CPU has instructions a Pi lacks and gives wrong int8
# results, hence QEMU_CPU=cortex-a72; and it passes the host's x86 /proc/cpuinfo through, on which
# `import onnxruntime` segfaults, hence an ARM cpuinfo bind-mounted over it.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$(cd "$HERE/../.." && pwd)"
SUITE=bookworm
export QEMU_CPU="${QEMU_CPU:-cortex-a72}"

die() { echo "userland.sh: $*" >&2; exit 2; }

debian_mirror() {
    if [ -n "${GRIDEDGE_DEBIAN_MIRROR:-}" ]; then echo "$GRIDEDGE_DEBIAN_MIRROR"; return; fi
    local uri
    # deb822 sources first (Debian 12's default), then one-line sources; the first Debian main archive wins.
    uri=$(awk '/^URIs:/ {u=$2} /^Suites:/ && u ~ /debian\/?$/ {print u; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $3 ~ /^'"$SUITE"'$/ {print $2; exit}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
    [ -n "$uri" ] || die "no Debian mirror in /etc/apt/sources*; set GRIDEDGE_DEBIAN_MIRROR"
    echo "$uri"
}

check_host() {
    command -v debootstrap >/dev/null || die "debootstrap missing: apt-get install -y qemu-user-static binfmt-support debootstrap"
    [ -x /usr/bin/qemu-aarch64-static ] || die "qemu-aarch64-static missing: apt-get install -y qemu-user-static binfmt-support"
    # binfmt registrations do not survive a reboot or a container restart: register it again if needed.
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 >&2 || true
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || die "binfmt for aarch64 not registered: update-binfmts --enable qemu-aarch64"
    [ "$(id -u)" = 0 ] || die "building and entering a chroot needs root"
}

cache_root() {
    local key
    key=$(cat "$0" "$HERE/cpuinfo-cortex-a72.txt" "$EDGE_REQS" "$TFLITE_REQS" | sha256sum | cut -c1-16)
    echo "${XDG_CACHE_HOME:-$HOME/.cache}/gridedge/arm64-$key"
}

MOUNTS=()
mount_into() {  # mount_into ROOT: what every command inside needs; unmount_all undoes it
    local root=$1
    mount -t proc proc "$root/proc" && MOUNTS+=("$root/proc")
    mount --bind "$HERE/cpuinfo-cortex-a72.txt" "$root/proc/cpuinfo" && MOUNTS+=("$root/proc/cpuinfo")
    mount --rbind /dev "$root/dev" && mount --make-rslave "$root/dev" && MOUNTS+=("$root/dev")
    cp -L /etc/resolv.conf "$root/etc/resolv.conf"
}
unmount_all() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount -R -l "${MOUNTS[$i]}" 2>/dev/null || true; done
    MOUNTS=()
}
trap unmount_all EXIT INT TERM
release_mounts_under() {  # a build killed half-way may have left its mounts: never delete through them
    awk -v prefix="$1/" 'index($2, prefix) == 1 {print $2}' /proc/mounts | sort -r | while read -r mounted; do
        umount -l "$mounted" || true
    done
}

in_root() {  # in_root ROOT COMMAND...: a clean environment, certificates of this machine trusted by pip
    local root=$1; shift
    chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        LANG=C.UTF-8 QEMU_CPU="$QEMU_CPU" PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
        PIP_DEFAULT_TIMEOUT=180 PYTHONDONTWRITEBYTECODE=1 DEBIAN_FRONTEND=noninteractive "${EXTRA_ENV[@]}" "$@"
}
EXTRA_ENV=()

build() {
    local final=$1 root
    local building="$final.building"
    release_mounts_under "$building"
    rm -rf --one-file-system "$building" && mkdir -p "$building"
    root="$building/rootfs"
    local mirror; mirror=$(debian_mirror)
    echo "userland.sh: building $final from $SUITE at $mirror (first time: a few minutes)" >&2
    debootstrap --arch=arm64 --foreign --variant=minbase "$SUITE" "$root" "$mirror" >&2
    cp /usr/bin/qemu-aarch64-static "$root/usr/bin/"
    mount_into "$root"
    in_root "$root" /debootstrap/debootstrap --second-stage >&2
    # Locally added CAs (e.g. an egress proxy's) so that HTTPS from inside works as it does on the host.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        mkdir -p "$root/usr/local/share/ca-certificates" && cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    fi
    in_root "$root" apt-get update -qq >&2
    in_root "$root" apt-get install -y -qq --no-install-recommends python3 python3-venv ca-certificates >&2
    in_root "$root" update-ca-certificates >&2
    mkdir -p "$root/opt/reqs" && cp "$EDGE_REQS" "$root/opt/reqs/edge.txt" && cp "$TFLITE_REQS" "$root/opt/reqs/tflite.txt"
    for venv in edge:edge.txt tflite214:tflite.txt; do
        in_root "$root" python3 -m venv "/opt/${venv%%:*}" >&2
        in_root "$root" "/opt/${venv%%:*}/bin/pip" install -q --only-binary :all: -r "/opt/reqs/${venv#*:}" >&2
    done
    in_root "$root" apt-get clean >&2
    unmount_all
    mv -T "$building" "$final"
}

ensure_built() {  # sets ROOT
    check_host
    local final; final=$(cache_root)
    mkdir -p "$(dirname "$final")"
    exec 9>"$final.lock"
    flock 9  # two runs at once build it once
    [ -d "$final/rootfs" ] || build "$final"
    ROOT="$final/rootfs"
}

[ $# -ge 3 ] || die "usage: $0 build|run EDGE_REQUIREMENTS TFLITE_REQUIREMENTS [RUN_DIR -- COMMAND...]"
ACTION=$1 EDGE_REQS=$(realpath "$2") TFLITE_REQS=$(realpath "$3"); shift 3
case "$ACTION" in
    build) ensure_built && echo "$ROOT" ;;
    run)
        RUN_DIR=$(realpath "$1"); shift
        [ "${1:-}" = "--" ] && shift
        ensure_built
        mount_into "$ROOT"
        mkdir -p "$ROOT/src" "$ROOT/case"
        mount --bind "$SRC" "$ROOT/src" && MOUNTS+=("$ROOT/src") && mount -o remount,bind,ro "$ROOT/src"
        mount --bind "$RUN_DIR" "$ROOT/case" && MOUNTS+=("$ROOT/case")
        EXTRA_ENV=(GRIDEDGE_ARM64_CASE=/case)
        status=0
        in_root "$ROOT" "$@" || status=$?
        exit "$status"
        ;;
    *) die "unknown action $ACTION; use build or run" ;;
esac
