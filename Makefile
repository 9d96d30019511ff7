# Breakwater developer entry points. Everything runs as root (BPF, netns).
VENV        := .venv
PY          := $(VENV)/bin/python
PYTEST_ARGS ?=
BUF         := tools/node_modules/.bin/buf
FUZZ_SCALE  ?= 50
FUZZ_TESTS  := tests/unit/test_fuzz_api.py tests/unit/test_fuzz_config.py tests/bpf/test_fuzz_packets.py

.DEFAULT_GOAL := help
DEMO_CHART  ?= build/x-spaces.png

.PHONY: help setup test fuzz demo bench bench-agent bench-harvest bench-controlplane bench-ha bench-lab check \
	check-vagrant vagrant-box vagrant-box-check vagrant-box-prune vagrant-up vagrant-down proto clean

help:
	@echo "Breakwater make targets:"
	@echo "  setup  install Debian packages, kernel headers, bpffs, .venv (scripts/setup.sh)"
	@echo "  test   run the test suite: pytest -ra tests \$$PYTEST_ARGS (the VM tier boots the lab box)"
	@echo "  demo   replay the X Spaces incident (scenarios/x-spaces.toml, ~4 min): 'breakwater lab run'"
	@echo "         with a live view, the per-wave table and the chart in \$$DEMO_CHART (build/x-spaces.png)"
	@echo "  fuzz   the fuzz tests (API, data plane, config files) as a long campaign:"
	@echo "         BREAKWATER_FUZZ_SCALE=\$$FUZZ_SCALE (default $(FUZZ_SCALE)) times the CI examples"
	@echo "  bench  run the benchmarks: bench/dataplane.py, then bench/agent.py"
	@echo "  bench-agent  run the agent benchmark only (bench/agent.py)"
	@echo "  bench-harvest  the counter harvest at 10k-4M sources and a 1M-line deny add --file (bench/harvest.py, bench/denyfile.py)"
	@echo "  bench-controlplane  run the control-plane benchmark (bench/controlplane.py; no root needed)"
	@echo "  bench-ha  run the high-availability benchmark (bench/ha.py: two controllers over etcd; no root needed)"
	@echo "  bench-lab  run the lab benchmark (bench/lab.py: x-spaces in monitor mode, then enforced; ~8 min)"
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

# The property-based tests with FUZZ_SCALE times their CI budget (50: about
# a million frames through the XDP program), keeping failing examples in
# .hypothesis/ so the next run replays them first.
fuzz: setup
	BREAKWATER_FUZZ_SCALE=$(FUZZ_SCALE) $(PY) -m pytest -ra -p no:cacheprovider -o timeout=0 $(FUZZ_TESTS) $(PYTEST_ARGS)

demo: setup
	mkdir -p $(dir $(DEMO_CHART))
	@# exit 3 is a finding (a wave not detected or not mitigated: the table says which); any other failure fails the demo
	$(VENV)/bin/breakwater lab run scenarios/x-spaces.toml --chart $(DEMO_CHART) || [ $$? -eq 3 ]

bench: setup
	$(PY) bench/dataplane.py
	$(PY) bench/agent.py

bench-agent: setup
	$(PY) bench/agent.py

bench-harvest: setup
	$(PY) bench/harvest.py
	$(PY) bench/denyfile.py

bench-controlplane: setup
	$(PY) bench/controlplane.py

bench-ha: setup
	$(PY) bench/ha.py

bench-lab: setup
	$(PY) bench/lab.py

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
