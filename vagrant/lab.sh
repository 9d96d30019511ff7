#!/usr/bin/env bash
# Breakwater's Vagrant lab, network-safe: a private libvirtd whose networks
# live in a network namespace this script creates, and Vagrant run inside it.
#
#   sudo vagrant/lab.sh up [ROLE...]    # namespace, libvirtd, box, vagrant up
#   sudo vagrant/lab.sh vagrant ARGS... # any vagrant command inside the lab
#   sudo vagrant/lab.sh ssh ROLE [CMD]  # vagrant ssh ROLE [-c CMD]
#   sudo vagrant/lab.sh prepare         # all of up but the VMs
#   sudo vagrant/lab.sh down            # VMs, libvirtd, namespace, files: gone
#   (or: make vagrant-up ROLES="edge1 attackers client", make vagrant-down)
#
# What `up` builds (LAB = $BREAKWATER_VAGRANT_LAB, default bw-vagrant):
#   - the network namespace LAB (loopback only: no link to the host, no route
#     out); libvirt's bridges (bw-mgmt 198.19.255.0/24 with DHCP, the isolated
#     lab link bw-lab 198.18.0.0/15), the guests' taps and dnsmasq all live
#     there, and so do Vagrant's ssh connections to the guests;
#   - a libvirtd of the lab's own, in that namespace and in a mount namespace
#     of its own whose /etc/libvirt, /run/libvirt, /var/lib/libvirt,
#     /var/cache/libvirt and /var/log/libvirt are directories under the lab's
#     state directory (/var/lib/breakwater/vagrant/LAB): no system libvirtd,
#     no 'default' NAT network, nothing of it on the host's network. Its qemu
#     driver runs guests as root without cgroups or a security driver (there
#     is no systemd here); the driver (kvm, or qemu = TCG where KVM guests do
#     not really run) comes from the Vagrantfile;
#   - Vagrant's home and its .vagrant directory under the state directory, with
#     the box `make vagrant-box` built added as breakwater/debian12 (unless
#     BREAKWATER_BOX names another box).
# `down` destroys the VMs, stops libvirtd (and its dnsmasq), deletes the
# namespace and the state directory (storage pool, box copies included); it
# also cleans up after an `up` that failed half-way.
set -euo pipefail

say() { printf 'vagrant-lab: %s\n' "$*" >&2; }
die() { printf 'vagrant-lab: ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (namespaces, libvirtd); try: sudo $0 $*"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
PYTHON="${BREAKWATER_PYTHON:-$REPO/.venv/bin/python}"
need_python() { [[ -x $PYTHON ]] || die "no $PYTHON: run make setup (or set BREAKWATER_PYTHON)"; }
LAB="${BREAKWATER_VAGRANT_LAB:-bw-vagrant}"
[[ $LAB =~ ^[a-z0-9-]{1,15}$ ]] || die "BREAKWATER_VAGRANT_LAB=$LAB: expected 1-15 of a-z, 0-9, -"
STATE="${BREAKWATER_VAGRANT_STATE:-/var/lib/breakwater/vagrant}/$LAB"
BOX_CACHE="${BREAKWATER_BOX_CACHE:-/var/cache/breakwater/box}"
SOCK="$STATE/run/libvirt-sock"
URI="qemu:///system?socket=$SOCK"
LIBVIRT_DIRS=(etc:/etc/libvirt run:/run/libvirt lib:/var/lib/libvirt cache:/var/cache/libvirt
              log:/var/log/libvirt)

in_lab() {
    ip netns exec "$LAB" env VAGRANT_HOME="$STATE/vagrant.d" VAGRANT_DOTFILE_PATH="$STATE/dot-vagrant" \
        VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_DEFAULT_PROVIDER=libvirt \
        BREAKWATER_LIBVIRT_URI="$URI" BREAKWATER_BOX_CACHE="$BOX_CACHE" "$@"
}
lab_vagrant() { (cd "$HERE" && in_lab vagrant "$@"); }
virsh_lab() { virsh -q -c "$URI" "$@"; }
breakwater() { PYTHONPATH="$REPO" "$PYTHON" -m controller.cli "$@"; }

libvirtd_pid() {
    local pid
    pid="$(cat "$STATE/libvirtd.pid" 2>/dev/null || true)"
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && printf '%s\n' "$pid"
}

write_config() {
    local d
    for d in "${LIBVIRT_DIRS[@]}"; do
        mkdir -p "$STATE/${d%%:*}" "${d#*:}"
    done
    mkdir -p "$STATE/images"
    # libvirt parses its build-time users (libvirt-qemu, libvirt-dnsmasq)
    # before it reads qemu.conf; libvirtd's mount namespace gets a passwd and
    # group that have them, the host's own files stay as they are.
    { cat /etc/passwd
      printf 'libvirt-qemu:x:64055:64055::/var/lib/libvirt:/usr/sbin/nologin\n'
      printf 'libvirt-dnsmasq:x:64056:64056::/var/lib/libvirt/dnsmasq:/usr/sbin/nologin\n'
    } >"$STATE/passwd"
    { cat /etc/group
      printf 'libvirt-qemu:x:64055:\nlibvirt-dnsmasq:x:64056:\nlibvirt:x:64057:\n'
    } >"$STATE/group"
    cat >"$STATE/etc/libvirtd.conf" <<EOF
# The Breakwater lab's own libvirtd (vagrant/lab.sh): a unix socket only.
unix_sock_dir = "/run/libvirt"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF
    cat >"$STATE/etc/qemu.conf" <<EOF
# Guests run as root, without cgroups (no systemd here), a security driver,
# private /dev namespaces or virtlogd: this libvirtd exists only for the lab.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
EOF
}

start_libvirtd() {
    if libvirtd_pid >/dev/null; then
        say "libvirtd already running (pid $(libvirtd_pid))"
        return
    fi
    write_config
    local binds="" d
    for d in "${LIBVIRT_DIRS[@]}"; do
        binds+="mount --bind '$STATE/${d%%:*}' '${d#*:}'; "
    done
    binds+="mount --bind '$STATE/passwd' /etc/passwd; mount --bind '$STATE/group' /etc/group; "
    say "libvirtd in namespace $LAB (state $STATE)"
    # ip netns exec gives the namespace; unshare a mount namespace in which
    # libvirt's own directories are the lab's.
    ip netns exec "$LAB" unshare --mount --propagation private \
        setsid bash -c "${binds}exec libvirtd --config /etc/libvirt/libvirtd.conf" \
        </dev/null >"$STATE/libvirtd.out" 2>&1 &
    echo $! >"$STATE/libvirtd.pid"
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -S $SOCK ]] && virsh_lab version >/dev/null 2>&1 && return
        libvirtd_pid >/dev/null || die "libvirtd exited: $(tail -n 5 "$STATE/libvirtd.out" "$STATE/log/libvirtd.log" 2>/dev/null)"
        sleep 0.2
    done
    die "libvirtd did not answer on $SOCK within 20 s"
}

ensure_pool() {
    virsh_lab pool-info default >/dev/null 2>&1 && return
    virsh_lab pool-define-as default dir --target "$STATE/images" >/dev/null
    virsh_lab pool-start default >/dev/null
}

ensure_box() {
    [[ -n ${BREAKWATER_BOX:-} ]] && return
    if in_lab vagrant box list 2>/dev/null | grep -q '^breakwater/debian12 '; then
        return
    fi
    local box
    box="$(find "$BOX_CACHE" -mindepth 2 -maxdepth 2 -name breakwater.box -printf '%T@ %p\n' 2>/dev/null \
        | sort -n | tail -n1 | cut -d' ' -f2-)"
    [[ -n $box ]] || die "no box under $BOX_CACHE: run make vagrant-box"
    say "vagrant box add breakwater/debian12 ($box)"
    in_lab vagrant box add --force --name breakwater/debian12 "$box" >/dev/null
}

# The lab's CA lives in the state directory (its key never enters a VM);
# each role's certificate, key and ca.crt go to vagrant/pki/ROLE/, which
# the synced folder carries to the VMs. Agents dial the controller's lab address.
issue_pki() {
    local role
    [[ -f $HERE/pki/controller/controller.crt && -f $STATE/ca/ca.key ]] && return
    say "pki: a CA for this lab, a controller certificate, a node certificate per edge"
    rm -rf "$HERE/pki"
    breakwater pki init --dir "$STATE/ca" --name "breakwater-lab-$LAB" >/dev/null
    breakwater pki issue controller controller --ca "$STATE/ca" --out "$HERE/pki/controller" \
        --host 198.18.0.2 >/dev/null
    for role in edge1 edge2; do
        breakwater pki issue node "$role" --ca "$STATE/ca" --out "$HERE/pki/$role" >/dev/null
    done
}

# The Python packages the VMs install (the lab has no route out).
ensure_wheels() {
    [[ -f $HERE/wheels/.complete ]] && return
    say "pip download the project's packages into vagrant/wheels"
    "$PYTHON" -m pip download -q --disable-pip-version-check -d "$HERE/wheels" "$REPO" 'setuptools>=68' wheel
    touch "$HERE/wheels/.complete"
}

cmd_prepare() {
    need_python
    mkdir -p "$STATE"
    issue_pki
    ensure_wheels
    if ! ip netns list | grep -qw "^$LAB"; then
        ip netns add "$LAB"
    fi
    ip -n "$LAB" link set lo up
    start_libvirtd
    ensure_pool
    ensure_box
}

cmd_up() {
    cmd_prepare
    say "vagrant up $*"
    lab_vagrant up --provider libvirt "$@"
}

cmd_down() {
    local pid
    if [[ -S $SOCK ]] && libvirtd_pid >/dev/null; then
        if [[ -d $STATE/dot-vagrant ]]; then
            lab_vagrant destroy -f || say "vagrant destroy failed; libvirt's domains go below"
        fi
        local dom net
        for dom in $(virsh_lab list --all --name 2>/dev/null); do
            virsh_lab destroy "$dom" >/dev/null 2>&1 || true
            virsh_lab undefine "$dom" --nvram >/dev/null 2>&1 || virsh_lab undefine "$dom" >/dev/null 2>&1 || true
        done
        for net in $(virsh_lab net-list --all --name 2>/dev/null); do
            virsh_lab net-destroy "$net" >/dev/null 2>&1 || true
        done
    fi
    if pid="$(libvirtd_pid)"; then
        say "stopping libvirtd (pid $pid)"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    # Whatever still runs in the namespace (qemu, dnsmasq) was the lab's.
    if ip netns list | grep -qw "^$LAB"; then
        for pid in $(ip netns pids "$LAB"); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$LAB"
        say "namespace $LAB deleted"
    fi
    rm -rf "$STATE" "$HERE/pki"
}

case "${1:-}" in
    up) shift; cmd_up "$@" ;;
    prepare) cmd_prepare ;;
    down|destroy) cmd_down ;;
    vagrant) shift; lab_vagrant "$@" ;;
    ssh)
        shift
        role="${1:?ssh ROLE [COMMAND]}"; shift
        if (($#)); then lab_vagrant ssh "$role" -c "$*"; else lab_vagrant ssh "$role"; fi
        ;;
    virsh) shift; virsh_lab "$@" ;;
    *) sed -n '2,9p' "$0" >&2; exit 2 ;;
esac
