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

.PHONY: help bpf bpf-check install test bench clean

help:
	@echo "make bpf        rebuild $(BPF_OBJ) from ebpf/ (clang)"
	@echo "make bpf-check  fail if the committed object differs from ebpf/"
	@echo "make install    create $(VENV) and install xtrace-catch into it"
	@echo "make test       run the test suite (root: loads BPF, makes netns)"
	@echo "make bench      run the benchmarks in bench/ (writes bench/results.md)"

bpf: $(BPF_OBJ)

$(BPF_OBJ): $(BPF_SRC)
	$(CLANG) $(BPF_CFLAGS) -c ebpf/xtrace.bpf.c -o $@.tmp
	llvm-strip -g --keep-section=.BTF --keep-section=.BTF.ext $@.tmp 2>/dev/null || true
	mv $@.tmp $@

bpf-check:
	@$(CLANG) $(BPF_CFLAGS) -c ebpf/xtrace.bpf.c -o /tmp/xtrace-check.bpf.o
	@llvm-strip -g /tmp/xtrace-check.bpf.o 2>/dev/null || true
	@cmp -s /tmp/xtrace-check.bpf.o $(BPF_OBJ) || { \
		echo "$(BPF_OBJ) is stale: it differs from what ebpf/ builds; run 'make bpf' and commit it" >&2; exit 1; }
	@echo "$(BPF_OBJ) matches ebpf/"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

install: $(VENV)/bin/python
	$(VENV)/bin/pip install -q -e '.[test]'

test: install
	$(VENV)/bin/python -m pytest -q tests

bench: install
	$(VENV)/bin/python bench/run.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
