# Breakwater developer entry points. Everything runs as root (BPF, netns).
VENV        := .venv
PY          := $(VENV)/bin/python
PYTEST_ARGS ?=
BUF         := tools/node_modules/.bin/buf

.DEFAULT_GOAL := help
.PHONY: help setup test demo bench bench-agent bench-controlplane check check-vagrant vagrant-box \
	vagrant-box-check vagrant-box-prune vagrant-up vagrant-down proto clean

help:
	@echo "Breakwater make targets:"
	@echo "  setup  install Debian packages, kernel headers, bpffs, .venv (scripts/setup.sh)"
	@echo "  test   run the test suite: pytest -ra tests \$$PYTEST_ARGS (the VM tier boots the lab box)"
	@echo "  demo   run 'breakwater demo'"
	@echo "  bench  run the benchmarks: bench/dataplane.py, then bench/agent.py"
	@echo "  bench-agent  run the agent benchmark only (bench/agent.py)"
	@echo "  bench-controlplane  run the control-plane benchmark (bench/controlplane.py; no root needed)"
	@echo "  check  lint and type-check: ruff check, mypy, generated code current, buf lint,"
	@echo "         vagrant validate and shellcheck (check-vagrant)"
	@echo "  vagrant-box  build (or reuse the cached) lab box from Debian packages (vagrant/build-box.sh)"
	@echo "  vagrant-box-check  build the box again from the same inputs; the package lists must match"
	@echo "  vagrant-box-prune  keep the newest \$$BREAKWATER_BOX_KEEP (default 2) boxes in the cache"
	@echo "  vagrant-up   the Vagrant lab in a namespace of its own (vagrant/lab.sh up \$$ROLES;"
	@echo "               default ROLES: edge1 attackers)"
	@echo "  vagrant-down destroy it: VMs, libvirtd, namespace, volumes (vagrant/lab.sh down)"
	@echo "  proto  regenerate breakwater/v1/ from proto/breakwater/v1/*.proto"
	@echo "  clean  remove .venv and caches"

setup:
	bash scripts/setup.sh

test: setup vagrant-box
	$(PY) -m pytest -ra tests $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/breakwater demo

bench: setup
	$(PY) bench/dataplane.py
	$(PY) bench/agent.py

bench-agent: setup
	$(PY) bench/agent.py

bench-controlplane: setup
	$(PY) bench/controlplane.py

check: setup
	$(VENV)/bin/ruff check controller tests bench scripts
	$(VENV)/bin/mypy
	$(PY) scripts/gen_proto.py --check
	$(BUF) lint
	$(MAKE) check-vagrant

# The Vagrant lab: the Vagrantfile parses, the shell scripts pass shellcheck.
check-vagrant:
	cd vagrant && VAGRANT_CHECKPOINT_DISABLE=1 vagrant validate
	shellcheck vagrant/*.sh scripts/setup.sh .ci/run

# The box, then the accelerator a guest really boots on here, for the Vagrantfile.
vagrant-box: setup
	bash vagrant/build-box.sh
	$(PY) -c 'from controller.lab import vm; vm.write_driver()'

vagrant-box-check: setup
	bash vagrant/build-box.sh --check

vagrant-box-prune:
	bash vagrant/build-box.sh --prune

# Two VMs by default (TCG on a shared machine); ROLES="controller edge1 edge2 ..." for more.
ROLES ?= edge1 attackers
vagrant-up: vagrant-box
	bash vagrant/lab.sh up $(ROLES)

vagrant-down:
	bash vagrant/lab.sh down

# Needs the dev tools in .venv (make setup); does not need root.
proto:
	$(PY) scripts/gen_proto.py

clean:
	rm -rf $(VENV) tools/node_modules .pytest_cache .mypy_cache .ruff_cache build *.egg-info
	find . -path ./.git -prune -o -type d -name __pycache__ -exec rm -rf {} +
