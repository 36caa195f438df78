# hoptrace: one entry point for building, testing and the demo, used locally and by CI.
# Targets that install (deps) expect a Debian 12 machine and root.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CLANG ?= clang
BPF_CFLAGS := -g -O2 -target bpf -mcpu=v3 -D__TARGET_ARCH_x86 -Wall -Wno-unused-function -Iprobes
APT_PACKAGES := clang llvm libbpf1 libbpf-dev bpftool iproute2 iptables nftables conntrack \
	iputils-ping tcpdump tshark iperf3 libpcap0.8 python3 python3-venv python3-pip make procps
BPF_OBJS := probes/hoptrace.bpf.o probes/caps.bpf.o

.PHONY: all deps apt venv build test test-pure test-kernels check demo clean

all: build

deps: apt venv

apt:
	@if [ "$$(id -u)" != 0 ]; then echo "make deps: run as root (apt-get install)"; exit 1; fi
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

build: $(BPF_OBJS)

probes/vmlinux.h:
	@test -r /sys/kernel/btf/vmlinux || { echo "no /sys/kernel/btf/vmlinux: this kernel lacks BTF (CONFIG_DEBUG_INFO_BTF)"; exit 1; }
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

probes/%.bpf.o: probes/%.bpf.c probes/hoptrace.h probes/vmlinux.h
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

test: deps build
	$(PY) -m pytest -ra

# The VM tier: kernel tests under stock Debian kernels (6.1, 6.12, 7.3) in QEMU, one after another,
# through ../shared/kvm-kernel-test (SKIPPED with the reason where that is absent). Needs root.
# KERNELS="6.12 7.3" picks some; docs/kernels.md has the matrix and the timings.
test-kernels: venv build
	$(PY) tools/kernel_matrix.py $(foreach k,$(KERNELS),--kernel $(k))

test-pure: venv
	$(PY) -m pytest -ra -m "not kernel and not compile"

check: venv
	$(VENV)/bin/ruff check tracer decoders probes tui tests benchmarks

demo: deps build
	$(PY) -m tracer.demo

clean:
	rm -f probes/*.o probes/vmlinux.h
