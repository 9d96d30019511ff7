#!/usr/bin/env bash
# Build Breakwater's Vagrant box (provider libvirt) from Debian packages only.
#
#   sudo bash vagrant/build-box.sh          # or: make vagrant-box
#
# debootstrap installs Debian bookworm (main, -updates, -security from the
# mirror below) with the cloud kernel and its headers, sshd, python3, bcc
# (python3-bpfcc) and the rest of what scripts/setup.sh installs, so that
# `make setup` and the agent run in the guest without any network. A user
# `vagrant` (password-less sudo) accepts Vagrant's well-known insecure key,
# as Vagrant expects of a base box. The root filesystem is written by
# `mkfs.ext4 -d` (no loop device, no mount) on a partitionless disk; the
# box boots its kernel directly (libvirt's kernel/initrd, set by the box's
# own Vagrantfile), so no bootloader is installed.
#
# Output, cached under $BREAKWATER_BOX_CACHE/<key> (default
# /var/cache/breakwater/box), the key a hash of this script and its inputs:
#   box.img        qcow2 root disk (ext4 on /dev/vda, label breakwater-root)
#   vmlinuz initrd.img   the guest's kernel and initramfs (direct kernel boot)
#   metadata.json Vagrantfile   the libvirt box description
#   breakwater.box the box archive for `vagrant box add`
#   manifest.txt   every installed package and version (what the box holds)
# A second run with the same inputs prints the cached path and does nothing.
# The last line of output is the box directory.
#
# Reproducible: fixed filesystem UUID, hash seed and timestamps
# (SOURCE_DATE_EPOCH), no ssh host keys or machine id in the image (made on
# first boot); the package versions are whatever the mirror serves that day,
# recorded in manifest.txt.
#
# Overrides:
#   BREAKWATER_BOX_CACHE   cache directory (default /var/cache/breakwater/box)
#   BREAKWATER_MIRROR      Debian mirror (default http://deb.debian.org/debian)
#   BREAKWATER_BOX_SIZE    disk size (default 4G)
#   BREAKWATER_BOX_REBUILD =1 rebuilds even when the cache holds the key
#   BREAKWATER_BOX_KEEP    boxes kept in the cache, newest first (default 2):
#                          a build prunes older box directories
#   BREAKWATER_BOX_DEBS    the .deb cache (default $BREAKWATER_BOX_CACHE/debs)
#
#   --prune   only prune the cache (keep the newest BREAKWATER_BOX_KEEP boxes)
#   --check   reproducibility check: build the same inputs again into a
#             scratch cache and compare with the cached box: manifest.txt
#             (every package and version) must be identical, else exit 1;
#             files.sha256 (every file of the root filesystem) is compared
#             too and the paths that differ are listed (what the build does
#             not yet make byte-identical). Needs a cached box (builds it first).
set -euo pipefail

say() { printf 'vagrant-box: %s\n' "$*" >&2; }
die() { printf 'vagrant-box: ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap, chroot); try: sudo $0"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SCRIPT="$HERE/$(basename "${BASH_SOURCE[0]}")"
CACHE="${BREAKWATER_BOX_CACHE:-/var/cache/breakwater/box}"
MIRROR="${BREAKWATER_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${MIRROR%/debian}/debian-security"
SUITE=bookworm
SIZE="${BREAKWATER_BOX_SIZE:-4G}"
EPOCH=1700000000
ROOT_UUID=6b7a0c1e-3f1d-4c55-9b2e-b2ea0e7a7e11
HASH_SEED=0e3c1d55-8a4f-4b7e-9d61-7a2f0c5b9e42

# What the guest holds: boot, ssh, and what scripts/setup.sh would install.
PKGS=(
    linux-image-cloud-amd64 linux-headers-cloud-amd64 initramfs-tools
    systemd-sysv udev dbus kmod openssh-server sudo ca-certificates
    python3 python3-venv python3-bpfcc python3-pyroute2 python3-numpy
    bpftool iproute2 nftables netsniff-ng ethtool make gcc procps less rsync
)
VAGRANT_PUB="ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEA6NF8iallvQVp22WDkTkyrtvp9eWW6A8YVr+kz4TjGYe7gHzIw+niNltGEFHzD8+v1I2YJ6oXevct1YeS0o9HZyN1Q9qgCgzUFtdOKLv6IedplqoPkcmF0aYet2PkEDo3MlTBckFXPITAMzF8dJSIFo9D8HfdOV0IAdx4O7PtixWKn5y2hMNG0zQPyUecp4pzC6kivAIhyfHilFR61RGL+GPXQ2MWZWFYbAGjyiYJnAmCP3NOTd0jMZEnDkbUvxhMmBYSdETk1rRgm+R4LOzFUGaHqHDLKLX+FIPKcF96hrucXzcWyLbIbEgE98OHlnVYCzRdK8jlqm8tehUc9c9WhQ== vagrant insecure public key"

MODE="${1:-build}"
case "$MODE" in
    build|--prune|--check) ;;
    *) die "unknown argument $MODE (expected --prune or --check)" ;;
esac
KEEP="${BREAKWATER_BOX_KEEP:-2}"
[[ $KEEP =~ ^[1-9][0-9]*$ ]] || die "BREAKWATER_BOX_KEEP=$KEEP: expected a positive integer"
DEBS="${BREAKWATER_BOX_DEBS:-$CACHE/debs}"

# Keep the newest $KEEP boxes of the cache (and always $1, the one in use).
prune() {
    local keep_dir="${1:-}" n=0 dir
    while read -r dir; do
        n=$((n + 1))
        if ((n > KEEP)) && [[ $dir != "$keep_dir" ]]; then
            say "prune: removing old box $dir"
            rm -rf "$dir"
        fi
    done < <(find "$CACHE" -mindepth 2 -maxdepth 2 -name breakwater.box -printf '%T@ %h\n' 2>/dev/null \
        | sort -rn | cut -d' ' -f2-)
}
if [[ $MODE == --prune ]]; then
    prune
    exit 0
fi

for tool in debootstrap mkfs.ext4 qemu-img chroot; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (make setup installs debootstrap, e2fsprogs, qemu-utils)"
done

KEY="$( { sha256sum "$SCRIPT" | cut -d' ' -f1; printf '%s\n' "$MIRROR" "$SUITE" "$SIZE" "${PKGS[@]}"; } \
    | sha256sum | cut -c1-16)"
OUT="$CACHE/$KEY"
if [[ $MODE == --check ]]; then
    [[ -f $OUT/manifest.txt ]] || bash "$SCRIPT" >/dev/null
    SCRATCH="$(mktemp -d "${TMPDIR:-/var/tmp}/bw-box-check.XXXXXX")"
    trap 'rm -rf "$SCRATCH"' EXIT
    say "check: building the same inputs again into $SCRATCH"
    BREAKWATER_BOX_CACHE="$SCRATCH" BREAKWATER_BOX_DEBS="$DEBS" BREAKWATER_BOX_KEEP=1 bash "$SCRIPT" >/dev/null
    a="$(sha256sum <"$OUT/manifest.txt" | cut -c1-64)"
    b="$(sha256sum <"$SCRATCH/$KEY/manifest.txt" | cut -c1-64)"
    files_differ=unknown
    if [[ -f $OUT/files.sha256 ]]; then
        files_differ="$(diff "$OUT/files.sha256" "$SCRATCH/$KEY/files.sha256" | grep -c '^>' || true)"
        diff "$OUT/files.sha256" "$SCRATCH/$KEY/files.sha256" | sed -n 's/^> [^ ]*  \.\{0,1\}/vagrant-box: check: differs: /p' >&2 || true
    fi
    printf '{"box": "%s", "manifest_sha256": "%s", "rebuilt_manifest_sha256": "%s", "packages": %s, "files_differing": "%s"}\n' \
        "$KEY" "$a" "$b" "$(wc -l <"$OUT/manifest.txt")" "$files_differ"
    [[ $a == "$b" ]] || { diff "$OUT/manifest.txt" "$SCRATCH/$KEY/manifest.txt" >&2 || true; die "check: the package lists differ"; }
    say "check: same package list (manifest sha256 $a)"
    exit 0
fi
if [[ -f $OUT/breakwater.box && ${BREAKWATER_BOX_REBUILD:-0} != 1 ]]; then
    say "cached: $OUT"
    printf '%s\n' "$OUT"
    exit 0
fi

mkdir -p "$CACHE"
WORK="$(mktemp -d "$CACHE/build.XXXXXX")"
ROOTFS="$WORK/rootfs"
MOUNTS=()
cleanup() {
    local m i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        m="${MOUNTS[$i]}"
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

in_root() { chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 "$@"; }

start=$SECONDS
say "debootstrap $SUITE from $MIRROR into $ROOTFS"
mkdir -p "$DEBS"
debootstrap --variant=minbase --cache-dir="$DEBS" --components=main \
    "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
say "debootstrap done in $((SECONDS - start)) s"

for m in proc sys dev dev/pts; do
    mount --bind "/$m" "$ROOTFS/$m"
    MOUNTS+=("$ROOTFS/$m")
done
cat >"$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
# No service starts inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
chmod 0755 "$ROOTFS/usr/sbin/policy-rc.d"
# The debootstrap cache doubles as apt's archive cache (hard links in, copies out).
mkdir -p "$ROOTFS/var/cache/apt/archives"
cp -al "$DEBS/." "$ROOTFS/var/cache/apt/archives/" 2>/dev/null || true

say "apt-get install ${#PKGS[@]} packages in the guest root"
in_root apt-get update -qq >"$WORK/apt.log" 2>&1 \
    || { tail -n 20 "$WORK/apt.log" >&2; die "apt-get update in the guest root failed"; }
in_root apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >>"$WORK/apt.log" 2>&1 \
    || { tail -n 20 "$WORK/apt.log" >&2; die "apt-get install in the guest root failed"; }
cp -n "$ROOTFS"/var/cache/apt/archives/*.deb "$DEBS/"
say "packages installed after $((SECONDS - start)) s"

# ------------------------------------------------------------ configuration
KREL="$(basename "$(find "$ROOTFS/lib/modules" -mindepth 1 -maxdepth 1 -type d | sort -V | tail -n1)")"
[[ -n $KREL && -f $ROOTFS/boot/vmlinuz-$KREL && -f $ROOTFS/boot/initrd.img-$KREL ]] \
    || die "no kernel/initramfs in the guest root (found release '$KREL')"
[[ -d $ROOTFS/lib/modules/$KREL/build/include ]] \
    || die "no headers for $KREL in the guest root (bcc needs /lib/modules/$KREL/build)"

echo breakwater >"$ROOTFS/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 breakwater\n' >"$ROOTFS/etc/hosts"
printf 'LABEL=breakwater-root / ext4 defaults,noatime 0 1\nbpffs /sys/fs/bpf bpf defaults 0 0\n' \
    >"$ROOTFS/etc/fstab"
# Every NIC asks DHCP (vagrant-libvirt's management network, qemu user-mode
# networking); a lab NIC that gets no answer keeps its static address.
mkdir -p "$ROOTFS/etc/systemd/network"
cat >"$ROOTFS/etc/systemd/network/80-dhcp.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no

[DHCPv4]
UseRoutes=yes
EOF
in_root systemctl enable systemd-networkd.service >/dev/null 2>&1
in_root systemctl enable ssh.service >/dev/null 2>&1
# Host keys are made on first boot, not baked into a shared image.
rm -f "$ROOTFS"/etc/ssh/ssh_host_*
mkdir -p "$ROOTFS/etc/systemd/system/ssh.service.d"
printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' \
    >"$ROOTFS/etc/systemd/system/ssh.service.d/hostkeys.conf"
printf 'UseDNS no\n' >"$ROOTFS/etc/ssh/sshd_config.d/breakwater.conf"
# The serial console is the only console (direct kernel boot, console=ttyS0).
in_root systemctl enable serial-getty@ttyS0.service >/dev/null 2>&1 || true

in_root useradd --create-home --shell /bin/bash --user-group vagrant
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' >"$ROOTFS/etc/sudoers.d/vagrant"
chmod 0440 "$ROOTFS/etc/sudoers.d/vagrant"
install -d -m 0700 -o 1000 -g 1000 "$ROOTFS/home/vagrant/.ssh"
printf '%s\n' "$VAGRANT_PUB" >"$ROOTFS/home/vagrant/.ssh/authorized_keys"
chmod 0600 "$ROOTFS/home/vagrant/.ssh/authorized_keys"
chown 1000:1000 "$ROOTFS/home/vagrant/.ssh/authorized_keys"
echo 'root:vagrant' | in_root chpasswd

# shellcheck disable=SC2016  # dpkg-query's own ${...} fields
in_root dpkg-query -W -f='${Package} ${Version}\n' >"$WORK/manifest.txt"
in_root apt-get clean
rm -f "$ROOTFS/usr/sbin/policy-rc.d"
for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount "${MOUNTS[$i]}" 2>/dev/null || umount -l "${MOUNTS[$i]}"
done
MOUNTS=()
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/*.log "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/*
: >"$ROOTFS/etc/machine-id"
rm -f "$ROOTFS/var/lib/dbus/machine-id"

# Every file of the root filesystem (sha256 of regular files, target of
# symbolic links), for --check: what a rebuild changes.
(cd "$ROOTFS" && find . -xdev \( -type f -o -type l \) -print0 | sort -z \
    | while IFS= read -r -d '' f; do
        if [[ -L $f ]]; then printf 'link:%s  %s\n' "$(readlink "$f")" "$f"
        else printf '%s  %s\n' "$(sha256sum <"$f" | cut -c1-64)" "$f"; fi
      done) >"$WORK/files.sha256"

# ------------------------------------------------------------------- images
cp "$ROOTFS/boot/vmlinuz-$KREL" "$WORK/vmlinuz"
cp "$ROOTFS/boot/initrd.img-$KREL" "$WORK/initrd.img"
say "mkfs.ext4 -d (size $SIZE)"
find "$ROOTFS" -exec touch --no-dereference --date="@$EPOCH" {} + 2>/dev/null || true
E2FSPROGS_FAKE_TIME=$EPOCH mkfs.ext4 -q -F -L breakwater-root -U "$ROOT_UUID" \
    -E "hash_seed=$HASH_SEED" -d "$ROOTFS" "$WORK/root.raw" "$SIZE" \
    || die "mkfs.ext4 -d failed"
qemu-img convert -f raw -O qcow2 "$WORK/root.raw" "$WORK/box.img"
rm -f "$WORK/root.raw"
VSIZE="$(( $(qemu-img info --output=json "$WORK/box.img" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])') / 1073741824 ))"
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %s}\n' "$VSIZE" >"$WORK/metadata.json"
cat >"$WORK/Vagrantfile" <<EOF
# Box Vagrantfile: Breakwater's Debian box boots its kernel directly.
Vagrant.configure("2") do |config|
  config.vm.provider "libvirt" do |lv|
    lv.kernel = File.join(__dir__, "vmlinuz")
    lv.initrd = File.join(__dir__, "initrd.img")
    lv.cmd_line = "root=LABEL=breakwater-root rw console=ttyS0 net.ifnames=0"
    lv.disk_bus = "virtio"
  end
end
EOF
printf 'kernel %s\nkey %s\n' "$KREL" "$KEY" >"$WORK/release.txt"
tar -C "$WORK" --sort=name --mtime="@$EPOCH" --owner=0 --group=0 --numeric-owner \
    -cf "$WORK/breakwater.box" metadata.json Vagrantfile box.img vmlinuz initrd.img
mkdir -p "$OUT"
for f in box.img vmlinuz initrd.img metadata.json Vagrantfile manifest.txt files.sha256 release.txt breakwater.box; do
    mv "$WORK/$f" "$OUT/$f"
done
say "built $OUT in $((SECONDS - start)) s (kernel $KREL)"
prune "$OUT"
printf '%s\n' "$OUT"
