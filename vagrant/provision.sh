#!/usr/bin/env bash
# Provision one Breakwater lab VM with the project's own setup.
#   $1: role (controller, edge1, edge2, origin, attackers, client)
#   $2: the controller's lab address (agents sync with it on port 9610)
#   $3: this VM's lab address with its prefix (eth1, e.g. 198.18.0.11/15)
#
# Every role: eth1 gets its lab address (systemd-networkd; Vagrant's own
# network configuration writes ifupdown files, which the box does not use),
# `make setup` in the synced repo (/breakwater) and /usr/local/bin/breakwater.
# The lab has no route out: on the box that `make vagrant-box` builds every
# Debian package is already installed, and Python packages come from
# vagrant/wheels/ when it exists (vagrant/lab.sh fills it on the host with
# `pip download`), so setup runs offline.
#   controller: `breakwater controller` on the lab address, mutual TLS with the
#               certificate vagrant/lab.sh issued (vagrant/pki/controller/)
#   edge1/2:    the agent's systemd unit (systemd/breakwater-agent.service),
#               docs/agent.toml on eth1 in native XDP mode, node id = role,
#               synced with the controller over mutual TLS (vagrant/pki/ROLE/)
#               and serving HTTP on 8080 (the service the lab protects)
#   origin:     a small HTTP service on port 8080 (the protected origin)
#   attackers, client: traffic tools only (trafgen, python3)
set -euo pipefail
role="${1:?role}"
controller="${2:?controller address}"
lab_cidr="${3:?lab address/prefix}"
cd /breakwater

install -d -m 0755 /etc/systemd/network
cat >/etc/systemd/network/10-breakwater-lab.network <<EOF
# The lab link (vagrant/provision.sh): static, never DHCP, no route out.
[Match]
Name=eth1

[Network]
Address=$lab_cidr
LinkLocalAddressing=no
IPv6AcceptRA=no
EOF
systemctl restart systemd-networkd
ip link set eth1 up
ip addr replace "$lab_cidr" dev eth1  # now, whether or not networkd was quicker

if [[ -d vagrant/wheels ]]; then
    export PIP_NO_INDEX=1 PIP_FIND_LINKS=/breakwater/vagrant/wheels
fi
export BREAKWATER_SKIP_TOOLS=1  # buf (npm), the host's VM tools and the dev extra are for the host
make setup
ln -sfn /breakwater/.venv/bin/breakwater /usr/local/bin/breakwater

# The certificates vagrant/lab.sh issued for this role (the CA's key stays on the host).
install_tls() {
    local src="vagrant/pki/$role"
    [[ -f $src/$role.crt ]] || { echo "provision: no certificate for $role in $src (vagrant/lab.sh issues them)" >&2; exit 1; }
    install -d -m 0700 /etc/breakwater/tls
    install -m 0600 "$src/$role.crt" "$src/$role.key" "$src/ca.crt" /etc/breakwater/tls/
}

http_service() {
    systemctl stop breakwater-http 2>/dev/null || true
    systemd-run --unit=breakwater-http --property=Restart=on-failure \
        python3 -m http.server --bind 0.0.0.0 8080 --directory /breakwater/docs
}

case "$role" in
    controller)
        install_tls
        cat >/etc/breakwater/controller.toml <<EOF
listen = "$controller:9610"
tls_cert = "/etc/breakwater/tls/controller.crt"
tls_key = "/etc/breakwater/tls/controller.key"
tls_ca = "/etc/breakwater/tls/ca.crt"
EOF
        systemctl stop breakwater-controller 2>/dev/null || true
        systemd-run --unit=breakwater-controller --property=Restart=on-failure \
            /usr/local/bin/breakwater controller --config /etc/breakwater/controller.toml
        ;;
    edge1|edge2)
        install_tls
        sed -e 's/{ name = "eth0", mode = "auto" }/{ name = "eth1", mode = "native" }/' \
            -e "s/^# *controller = .*/controller = \"$controller:9610\"/" \
            -e "s/^# *node_id = .*/node_id = \"$role\"/" \
            docs/agent.toml >/etc/breakwater/agent.toml
        cat >>/etc/breakwater/agent.toml <<EOF

[tls]
cert = "/etc/breakwater/tls/$role.crt"
key = "/etc/breakwater/tls/$role.key"
ca = "/etc/breakwater/tls/ca.crt"
EOF
        for want in '^controller = ' "^node_id = \"$role\"" 'name = "eth1", mode = "native"'; do
            grep -q "$want" /etc/breakwater/agent.toml \
                || { echo "provision: docs/agent.toml changed: no line for '$want' after editing" >&2; exit 1; }
        done
        /usr/local/bin/breakwater agent --config /etc/breakwater/agent.toml --check-config >/dev/null
        install -m 0644 systemd/breakwater-agent.service /etc/systemd/system/
        systemctl daemon-reload
        systemctl enable breakwater-agent.service
        systemctl restart breakwater-agent.service
        http_service
        ;;
    origin)
        http_service
        ;;
    attackers|client)
        ;;
    *)
        echo "provision: unknown role $role" >&2
        exit 1
        ;;
esac
echo "provision: $role ready"
