# xtrace-catch build entry points. `make help` lists them.
PYTHON    ?= python3
VENV      ?= .venv
CLANG     ?= clang
BPF_OBJ   := xtrace_catch/bpf/xtrace.bpf.o
BPF_SRC   := ebpf/xtrace.bpf.c ebpf/xtrace.h
ARCH_INC  := /usr/include/$(shell $(CLANG) -print-multiarch 2>/dev/null || gcc -dumpmachine)
# Reproducible: no absolute build paths in the debug info.
BPF_CFLAGS := -g -O2 -target bpf -Wall -Werror -I ebpf -I $(ARCH_INC) \
	-fdebug-prefix-map=$(CURDIR)=. -fdebug-compilation-dir=.

# Debian 12 packages: running needs libbpf1 + python3-venv + iproute2; building the
# object needs clang/llvm/libbpf-dev; the tests need the rest.
DEB_PKGS  := make gcc clang llvm libbpf1 libbpf-dev bpftool iproute2 python3 python3-venv python3-pip \
	tshark tcpreplay victoria-metrics prometheus libcap2-bin
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help deps bpf bpf-check install test bench clean

help:
	@echo "make deps       apt-get the Debian packages to build, run and test"
	@echo "make bpf        rebuild $(BPF_OBJ) from ebpf/ (clang)"
	@echo "make bpf-check  fail if the committed object differs from ebpf/"
	@echo "make install    create $(VENV) and install xtrace-catch into it"
	@echo "make test       run the test suite (root: loads BPF, makes netns)"
	@echo "make bench      run the benchmarks in bench/ (writes bench/results/*.md)"

deps:
	$(SUDO) apt-get update -q
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(DEB_PKGS)

bpf: $(BPF_OBJ)

# DWARF is stripped (BTF and BTF.ext, which CO-RE needs, stay): smaller and free of paths.
define build_bpf
	$(CLANG) $(BPF_CFLAGS) -c ebpf/xtrace.bpf.c -o $(1)
	llvm-strip -g $(1)
endef

$(BPF_OBJ): $(BPF_SRC)
	$(call build_bpf,$@.tmp)
	mv $@.tmp $@

# CI: the committed object must be what ebpf/ builds today.
bpf-check:
	@tmp=$$(mktemp -d) && $(MAKE) -s --no-print-directory bpf-build-to OUT=$$tmp/x.bpf.o && \
	if cmp -s $$tmp/x.bpf.o $(BPF_OBJ); then echo "$(BPF_OBJ) matches ebpf/"; rm -rf $$tmp; else \
	  echo "$(BPF_OBJ) is stale: it differs from what ebpf/ builds; run 'make bpf' and commit it" >&2; rm -rf $$tmp; exit 1; fi

bpf-build-to:
	@$(call build_bpf,$(OUT))

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

install: $(VENV)/bin/python
	$(VENV)/bin/pip install -q -e .

test: $(VENV)/bin/python bpf-check
	$(VENV)/bin/pip install -q -e '.[test]'
	$(VENV)/bin/python -m pytest -q tests

bench: $(VENV)/bin/python
	$(VENV)/bin/pip install -q -e '.[test]'
	$(VENV)/bin/python bench/run.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
