#!/usr/bin/env bash
# Breakwater development/CI setup for Debian 12 (run as root, idempotent).
#
#   - Debian packages: bcc (python3-bpfcc), bpftool, iproute2, nftables,
#     netsniff-ng (trafgen), make, gcc, etcd-server and etcd-client (the
#     store tests start their own etcd; the packaged service is not left
#     running), python3-venv when needed
#   - kernel headers for bcc (falls back to Debian's closest headers when the
#     running kernel has no headers package)
#   - bpffs mounted at /sys/fs/bpf
#   - .venv with Debian's bcc linked in, and the project installed '.[dev]'
#   - buf (npm package @bufbuild/buf, pinned in tools/package-lock.json) in
#     tools/node_modules for `make check`'s buf lint; npm from Debian if missing
#   - the VM lab's host tools: debootstrap, qemu-system-x86, qemu-utils,
#     openssh-client (make vagrant-box, tests/vm), vagrant, vagrant-libvirt
#     and shellcheck (make check's vagrant validate and shell check), and for
#     vagrant/lab.sh (make vagrant-up) libvirtd with its qemu driver, virsh,
#     dnsmasq-base, iptables and rsync; not libvirt-daemon-system, whose
#     service would start a libvirtd on the host with its 'default' NAT
#     network (a bridge on the host's network): lab.sh starts its own
#     libvirtd inside the lab's namespace
#   - a final check that bcc compiles and loads an XDP program
#
# Overrides (mostly for testing this script):
#   BREAKWATER_MODULES_DIR     where kernel module trees live (default /lib/modules)
#   BREAKWATER_KERNEL_RELEASE  kernel release to set up headers for (default uname -r)
#   BREAKWATER_SKIP_BPF_CHECK  =1 skips the final compile-and-load check
#   BREAKWATER_SKIP_TOOLS      =1 skips the developer tools (buf, the VM lab's
#                              host tools, the project's dev extra): what a lab
#                              VM's offline provisioning sets
set -euo pipefail

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (BPF, bpffs, apt); try: sudo $0"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

MODULES_DIR="${BREAKWATER_MODULES_DIR:-/lib/modules}"
KREL="${BREAKWATER_KERNEL_RELEASE:-$(uname -r)}"
DEBIAN_BCC=/usr/lib/python3/dist-packages/bcc
VENV="$REPO_ROOT/.venv"
export DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------- apt helpers
APT_UPDATED=0
apt_update_once() {
    if [[ $APT_UPDATED -eq 0 ]]; then
        say "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
}

is_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" == installed ]]
}

# True if apt has an installable candidate for package $1.
has_candidate() {
    local cand
    cand="$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')"
    [[ -n $cand && $cand != "(none)" ]]
}

apt_install() {
    apt_update_once
    say "apt-get install $*"
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# First python3.11/python3 on PATH that can create venvs (has venv + ensurepip).
find_venv_python() {
    local py
    for py in python3.11 python3; do
        if command -v "$py" >/dev/null 2>&1 \
            && "$py" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' \
                >/dev/null 2>&1; then
            command -v "$py"
            return 0
        fi
    done
    return 1
}

# ------------------------------------------------------------ Debian packages
PKGS=(python3-bpfcc bpftool iproute2 nftables netsniff-ng make gcc)
SKIP_TOOLS="${BREAKWATER_SKIP_TOOLS:-0}"
if [[ $SKIP_TOOLS != 1 ]]; then
    PKGS+=(debootstrap qemu-system-x86 qemu-utils openssh-client e2fsprogs vagrant vagrant-libvirt shellcheck
           etcd-server etcd-client
           libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients dnsmasq-base iptables rsync)
fi
if ! find_venv_python >/dev/null; then
    PKGS+=(python3 python3-venv)
fi
MISSING=()
for p in "${PKGS[@]}"; do
    is_installed "$p" || MISSING+=("$p")
done
# npm for buf (tools/); a machine with its own Node.js and npm keeps them.
if [[ $SKIP_TOOLS != 1 ]] && ! command -v npm >/dev/null 2>&1; then
    MISSING+=(npm)
fi
if ((${#MISSING[@]})); then
    apt_install "${MISSING[@]}"
    # Debian starts etcd.service on install; tests/store starts its own members
    # on free ports, so a service this run installed is stopped again.
    if [[ " ${MISSING[*]} " == *" etcd-server "* ]] && command -v systemctl >/dev/null 2>&1 \
        && systemctl is-active --quiet etcd 2>/dev/null; then
        say "stopping and disabling the packaged etcd.service (tests run their own etcd)"
        systemctl disable --now etcd >/dev/null 2>&1 || true
    fi
else
    say "Debian packages already installed"
fi

# ------------------------------------------------------------- kernel headers
headers_ok() { [[ -d "$MODULES_DIR/$KREL/build/include" ]]; }

link_debian_headers() {
    local arch candidates meta="" c flavour ver flavour_dir common_dir build
    arch="$(dpkg --print-architecture)"
    case "$arch" in
        amd64) candidates=(linux-headers-cloud-amd64 linux-headers-amd64) ;;
        arm64) candidates=(linux-headers-arm64 linux-headers-cloud-arm64) ;;
        *) candidates=("linux-headers-$arch") ;;
    esac
    for c in "${candidates[@]}"; do
        if is_installed "$c"; then meta="$c"; break; fi
    done
    if [[ -z $meta ]]; then
        apt_update_once
        for c in "${candidates[@]}"; do
            if has_candidate "$c"; then meta="$c"; break; fi
        done
        [[ -n $meta ]] || die "no kernel headers for $KREL and none of ${candidates[*]} in apt; install headers matching your kernel at $MODULES_DIR/$KREL/build"
        apt_install "$meta"
    fi
    flavour="${meta#linux-headers-}"

    # The metapackage depends on linux-headers-<ver>-<flavour>; fall back to
    # the newest matching dir in /usr/src.
    flavour_dir=""
    ver="$(dpkg-query -W -f='${Depends}' "$meta" 2>/dev/null \
        | grep -o "linux-headers-[^ ,]*-$flavour" | head -n1 || true)"
    if [[ -n $ver && -d /usr/src/$ver/include ]]; then
        flavour_dir="/usr/src/$ver"
    else
        flavour_dir="$(find /usr/src -maxdepth 1 -type d -name "linux-headers-*-$flavour" \
            | sort -V | tail -n1)"
    fi
    [[ -n $flavour_dir && -d $flavour_dir/include ]] \
        || die "installed $meta but found no /usr/src/linux-headers-*-$flavour with include/"
    common_dir="${flavour_dir%-"$flavour"}-common"
    [[ -d $common_dir/include ]] || die "found $flavour_dir but not its $common_dir"

    build="$MODULES_DIR/$KREL/build"
    mkdir -p "$MODULES_DIR/$KREL"
    for l in build source; do
        if [[ -e "$MODULES_DIR/$KREL/$l" && ! -L "$MODULES_DIR/$KREL/$l" ]]; then
            die "$MODULES_DIR/$KREL/$l exists and is not a symlink; move it aside and rerun"
        fi
    done
    ln -sfn "$flavour_dir" "$build"
    ln -sfn "$common_dir" "$MODULES_DIR/$KREL/source"
    say "no headers package for kernel $KREL; linked Debian's $(basename "$flavour_dir") headers as $build (bcc compiles against them; fine for XDP programs that use only stable UAPI headers)"
}

if headers_ok; then
    say "kernel headers present at $MODULES_DIR/$KREL/build"
else
    apt_update_once
    if has_candidate "linux-headers-$KREL"; then
        apt_install "linux-headers-$KREL"
    fi
    headers_ok || link_debian_headers
    headers_ok || die "kernel headers still missing at $MODULES_DIR/$KREL/build"
fi

# ---------------------------------------------------------------------- bpffs
if awk '$2 == "/sys/fs/bpf" && $3 == "bpf" { found = 1 } END { exit !found }' /proc/mounts; then
    say "bpffs mounted at /sys/fs/bpf"
else
    say "mounting bpffs at /sys/fs/bpf"
    mkdir -p /sys/fs/bpf
    mount -t bpf bpf /sys/fs/bpf || die "could not mount bpffs at /sys/fs/bpf"
fi

# ----------------------------------------------------------------------- venv
if [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    say "venv .venv exists"
else
    PY="$(find_venv_python)" || die "no python3.11/python3 with a working venv module (install python3-venv)"
    say "creating .venv with $PY"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV" || die "$PY -m venv .venv failed"
fi

# Expose only Debian's bcc package (not all of dist-packages) to the venv.
[[ -d $DEBIAN_BCC ]] || die "$DEBIAN_BCC missing; is python3-bpfcc installed?"
mkdir -p "$VENV/debian-bcc"
ln -sfn "$DEBIAN_BCC" "$VENV/debian-bcc/bcc"
PURELIB="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
PTH="$PURELIB/debian-bcc.pth"
if [[ "$(cat "$PTH" 2>/dev/null || true)" != "$VENV/debian-bcc" ]]; then
    printf '%s\n' "$VENV/debian-bcc" >"$PTH"
    say "linked Debian's bcc into .venv ($PTH)"
fi
"$VENV/bin/python" -c 'import bcc' 2>/dev/null \
    || die "'.venv/bin/python -c \"import bcc\"' fails; check python3-bpfcc/libbpfcc and $PTH"

# ------------------------------------------------------------ project install
HASH="$(sha256sum pyproject.toml | cut -c1-16)"
STAMP="$VENV/.installed-$HASH"
if [[ -e $STAMP ]]; then
    say "project already installed in .venv (pyproject.toml unchanged)"
else
    TARGET='.[dev]'
    [[ $SKIP_TOOLS == 1 ]] && TARGET='.'
    say "pip install -e '$TARGET'"
    PIP_LOG="$VENV/pip-install.log"
    if ! "$VENV/bin/pip" install -q --disable-pip-version-check -e "$TARGET" >"$PIP_LOG" 2>&1; then
        tail -n 30 "$PIP_LOG" >&2
        die "pip install -e '$TARGET' failed (full log: $PIP_LOG)"
    fi
    rm -f "$VENV"/.installed-*
    touch "$STAMP"
fi

# ------------------------------------------------------------ buf (npm tools)
# tools/package-lock.json pins @bufbuild/buf; its platform binary comes as an
# optional dependency, so no install script has to run.
TOOLS_HASH="$(sha256sum tools/package-lock.json | cut -c1-16)"
TOOLS_STAMP="tools/node_modules/.installed-$TOOLS_HASH"
if [[ $SKIP_TOOLS == 1 ]]; then
    say "skipping buf (BREAKWATER_SKIP_TOOLS=1)"
elif [[ -e $TOOLS_STAMP && -x tools/node_modules/.bin/buf ]]; then
    say "buf already installed in tools/node_modules (package-lock.json unchanged)"
else
    say "npm ci in tools/ (buf)"
    NPM_LOG="$VENV/npm-tools.log"
    if ! npm ci --prefix tools --no-audit --no-fund >"$NPM_LOG" 2>&1; then
        tail -n 30 "$NPM_LOG" >&2
        die "npm ci in tools/ failed (full log: $NPM_LOG)"
    fi
    tools/node_modules/.bin/buf --version >/dev/null 2>&1 \
        || die "tools/node_modules/.bin/buf does not run; see $NPM_LOG"
    rm -f tools/node_modules/.installed-*
    touch "$TOOLS_STAMP"
fi

# ---------------------------------------------------------------- final check
if [[ ${BREAKWATER_SKIP_BPF_CHECK:-0} == 1 ]]; then
    say "skipping bcc XDP check (BREAKWATER_SKIP_BPF_CHECK=1)"
    exit 0
fi
if out="$("$VENV/bin/python" - 2>&1 <<'EOF'
import sys
from bcc import BPF
try:
    b = BPF(text="int f(struct xdp_md *c){return XDP_PASS;}")
except Exception as e:
    print(f"COMPILE: {e}")
    sys.exit(2)
try:
    b.load_func("f", BPF.XDP)
except Exception as e:
    print(f"LOAD: {e}")
    sys.exit(3)
EOF
)"; then
    say "bcc compiles and loads XDP programs"
else
    rc=$?
    printf '%s\n' "$out" | tail -n 20 >&2
    case $rc in
        2) die "bcc could not compile a trivial XDP program; check kernel headers at /lib/modules/$(uname -r)/build (and libbpfcc)" ;;
        3) die "bcc compiled but the kernel refused to load an XDP program; need root with CAP_BPF/CAP_SYS_ADMIN and a kernel with BPF enabled" ;;
        *) die "bcc XDP check failed (exit $rc); see output above" ;;
    esac
fi
