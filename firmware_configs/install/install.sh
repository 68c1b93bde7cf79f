#!/usr/bin/env bash
# Install this device folder (from `gridedge provision --wheelhouse`) on the device, offline.
#
#   sudo ./install.sh [--prefix DIR] [--no-systemd]        (default prefix /opt/gridedge)
#
#   PREFIX/versions/<release>/   venv/, config.yaml, bundle/, keys/, registers/ of one install
#   PREFIX/current  -> versions/<release>     what the service runs
#   PREFIX/previous -> versions/<release>     what ran before, kept for rollback
#
# <release> is the gridedge version and a hash of this folder's content (release.env), so a new bundle,
# config or set of wheels is a new release and the same folder twice is the same one. A release becomes
# `current` only when it is complete (its venv installed from wheelhouse/ with --no-index and its model
# verified and self-tested), by one rename of a symlink; until that instant the previous release stays
# `current`, untouched and running. Stopped or failing anywhere, the next run starts that release again.
# Running it twice is harmless. GRIDEDGE_NO_SYSTEMD=1 is the same as --no-systemd (containers, tests).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PREFIX=/opt/gridedge
SYSTEMD=auto
[ "${GRIDEDGE_NO_SYSTEMD:-0}" = 1 ] && SYSTEMD=no
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX="$2"; shift 2 ;;
        --no-systemd) SYSTEMD=no; shift ;;
        *) echo "install.sh: unknown argument $1; use --prefix DIR or --no-systemd" >&2; exit 2 ;;
    esac
done
# shellcheck source=/dev/null
. "$HERE/release.env"  # GRIDEDGE_RELEASE, GRIDEDGE_PYTHON_VERSION
RELEASE="versions/$GRIDEDGE_RELEASE"
TARGET="$PREFIX/$RELEASE"
UNIT=/etc/systemd/system/gridedge-agent.service

say() { echo "install.sh: $*" >&2; }
# A test seam: GRIDEDGE_INSTALL_FAIL_AT=<step> stops the install there, as a power cut or a full disk would.
step_done() {
    if [ "${GRIDEDGE_INSTALL_FAIL_AT:-}" = "$1" ]; then say "stopping after step '$1' (GRIDEDGE_INSTALL_FAIL_AT)"; exit 70; fi
}

find_python() {
    local candidate
    for candidate in "${GRIDEDGE_PYTHON:-}" "python$GRIDEDGE_PYTHON_VERSION" python3; do
        [ -n "$candidate" ] && command -v "$candidate" >/dev/null || continue
        if [ "$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$GRIDEDGE_PYTHON_VERSION" ]; then
            echo "$candidate"; return
        fi
    done
    say "no Python $GRIDEDGE_PYTHON_VERSION found (the wheels are built for it); install python$GRIDEDGE_PYTHON_VERSION and python3-venv"
    exit 3
}

build_release() {
    local python; python=$(find_python)
    rm -rf "$TARGET"  # a release an earlier run left incomplete
    mkdir -p "$TARGET"
    local item
    for item in config.yaml bundle keys registers systemd; do
        [ -e "$HERE/$item" ] && cp -a "$HERE/$item" "$TARGET/"
    done
    [ -d "$TARGET/keys" ] && chmod -R go-rwx "$TARGET/keys"
    "$python" -m venv "$TARGET/venv"
    # Only this folder's wheels: no index, and no pip configuration or PIP_* variable of this machine.
    # --no-compile: byte-compiling all of numpy and the runtimes up front is most of an install on a small
    # CPU; Python compiles the few modules the agent imports on its first start.
    env $(compgen -e | grep '^PIP_' | sed 's/^/-u /') PIP_CONFIG_FILE=/dev/null \
        "$TARGET/venv/bin/python" -m pip install --quiet --no-compile --no-index --find-links "$HERE/wheelhouse" \
        -r "$HERE/wheelhouse/requirements.txt"
    step_done pip
    # The model must verify and pass its self-test in this very venv before anything runs it.
    "$TARGET/venv/bin/python" - "$TARGET/config.yaml" <<'PY'
import sys

from edge_agent.bundle import read_bundle
from edge_agent.config import load_config
from edge_agent.keys import load_public_key
from edge_agent.runtimes import load_model
from edge_agent.runtimes.selftest import run_self_test

config = load_config(sys.argv[1])
bundle = read_bundle(config.bundle.path, load_public_key(config.bundle.public_key))
artefact, runtime = load_model(bundle, config.bundle.artefact, config.runtime)
error = run_self_test(runtime, bundle.manifest, artefact)
print(f"install.sh: {artefact.file} verified, self-test max abs error {error:.3g}", file=sys.stderr)
PY
    step_done check
    sync
    touch "$TARGET/.complete"
    sync
}

switch_to() {  # switch_to versions/<release>: one rename, so `current` is always one whole release
    ln -sfn "$1" "$PREFIX/.current.new"
    mv -T "$PREFIX/.current.new" "$PREFIX/current"
}

mkdir -p "$PREFIX/versions"
exec 9>"$PREFIX/.install.lock"
flock 9  # two installs at once would race on the same release folder

if [ -e "$TARGET/.complete" ]; then
    say "release $GRIDEDGE_RELEASE is already installed"
else
    say "installing release $GRIDEDGE_RELEASE into $TARGET"
    build_release
fi

OLD="$(readlink "$PREFIX/current" 2>/dev/null || true)"
if [ "$OLD" != "$RELEASE" ]; then
    step_done switch
    switch_to "$RELEASE"
    if [ -n "$OLD" ]; then
        ln -sfn "$OLD" "$PREFIX/.previous.new" && mv -T "$PREFIX/.previous.new" "$PREFIX/previous"
    fi
    say "current -> $RELEASE${OLD:+ (previous -> $OLD)}"
fi

# Keep the current and the previous release; older ones and leftovers of interrupted runs go.
KEEP_PREVIOUS="$(readlink "$PREFIX/previous" 2>/dev/null || true)"
for release in "$PREFIX"/versions/*; do
    [ -e "$release" ] || continue
    name="versions/$(basename "$release")"
    [ "$name" = "$RELEASE" ] || [ "$name" = "$KEEP_PREVIOUS" ] || rm -rf "$release"
done

if [ "$SYSTEMD" = auto ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    sed -e "s#/opt/gridedge/venv/#$PREFIX/current/venv/#g" -e "s#/opt/gridedge/config.yaml#$PREFIX/current/config.yaml#g" \
        -e "s#^WorkingDirectory=.*#WorkingDirectory=$PREFIX/current#" "$PREFIX/current/systemd/gridedge-agent.service" \
        > "$UNIT.new"
    mv -T "$UNIT.new" "$UNIT"
    systemctl daemon-reload
    systemctl enable gridedge-agent.service
    if ! systemctl restart gridedge-agent.service || ! sleep 5 || ! systemctl is-active --quiet gridedge-agent.service; then
        if [ -n "$OLD" ] && [ "$OLD" != "$RELEASE" ]; then
            say "the agent of $RELEASE did not start; back to $OLD (see journalctl -u gridedge-agent)"
            switch_to "$OLD"
            systemctl restart gridedge-agent.service || true
        fi
        exit 1
    fi
    say "gridedge-agent.service enabled and running $RELEASE"
else
    say "systemd not used: run $PREFIX/current/venv/bin/gridedge agent run --config $PREFIX/current/config.yaml"
fi
