#!/usr/bin/env bash
# Provision one Breakwater lab VM with the project's own setup.
#   $1: role (controller, edge1, edge2, origin, attackers, client)
#   $2: the controller's lab address (agents sync with it on port 9610)
#
# Every role: `make setup` in the synced repo (/breakwater) and
# /usr/local/bin/breakwater. The lab has no route out: on the box that
# `make vagrant-box` builds every Debian package is already installed, and
# Python packages come from vagrant/wheels/ when it exists (filled on the host
# by `pip download -d vagrant/wheels .`), so setup runs offline.
#   controller: `breakwater controller` as a systemd service on the lab address
#   edge1/2:    the agent's systemd unit (systemd/breakwater-agent.service),
#               docs/agent.toml on eth1, synced with the controller
#   origin:     a small HTTP service on port 8080 (the protected origin)
#   attackers, client: traffic tools only (trafgen, python3)
set -euo pipefail
role="${1:?role}"
controller="${2:?controller address}"
cd /breakwater

if [[ -d vagrant/wheels ]]; then
    export PIP_NO_INDEX=1 PIP_FIND_LINKS=/breakwater/vagrant/wheels
fi
export BREAKWATER_SKIP_TOOLS=1  # buf (npm) is for `make check`, not for the lab
make setup
ln -sfn /breakwater/.venv/bin/breakwater /usr/local/bin/breakwater

case "$role" in
    controller)
        systemd-run --unit=breakwater-controller --property=Restart=on-failure \
            /usr/local/bin/breakwater controller --listen "$controller:9610"
        ;;
    edge1|edge2)
        install -d -m 0755 /etc/breakwater
        sed -e 's/{ name = "eth0", mode = "auto" }/{ name = "eth1", mode = "native" }/' \
            -e "s/^# *controller = .*/controller = \"$controller:9610\"/" \
            docs/agent.toml >/etc/breakwater/agent.toml
        grep -q "^controller = " /etc/breakwater/agent.toml \
            || { echo "provision: docs/agent.toml has no '# controller =' line to fill" >&2; exit 1; }
        install -m 0644 systemd/breakwater-agent.service /etc/systemd/system/
        systemctl daemon-reload
        systemctl enable --now breakwater-agent.service
        ;;
    origin)
        systemd-run --unit=breakwater-origin --property=Restart=on-failure \
            python3 -m http.server --bind 0.0.0.0 8080 --directory /breakwater/docs
        ;;
    attackers|client)
        ;;
    *)
        echo "provision: unknown role $role" >&2
        exit 1
        ;;
esac
echo "provision: $role ready"
