#!/usr/bin/env bash
# Provision one Breakwater lab box. $1: role (edge, client, attack).
set -euo pipefail
role="${1:?role}"
cd /breakwater
bash scripts/setup.sh
case "$role" in
  edge)
    echo "provision: edge ready; attach with: sudo .venv/bin/breakwater dataplane attach eth1" ;;
  client|attack)
    echo "provision: $role ready (traffic tools: trafgen from netsniff-ng)" ;;
  *) echo "provision: unknown role $role" >&2; exit 1 ;;
esac
