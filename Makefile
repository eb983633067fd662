# xtrace-catch build entry points. `make help` lists them.
PYTHON    ?= python3
VENV      ?= .venv
CLANG     ?= clang
BPF_OBJ   := xtrace_catch/bpf/xtrace.bpf.o
BPF_SRC   := ebpf/xtrace.bpf.c ebpf/xtrace.h
ARCH_INC  := /usr/include/$(shell $(CLANG) -print-multiarch 2>/dev/null || gcc -dumpmachine 2>/dev/null)
# Reproducible: no absolute build paths in the debug info.
BPF_CFLAGS := -g -O2 -target bpf -Wall -Werror -I ebpf -I $(ARCH_INC) \
	-fdebug-prefix-map=$(CURDIR)=. -fdebug-compilation-dir=.

# Debian 12 packages. Running needs only DEB_RUN ('make deps'); 'make deps-test' adds what
# building the object (clang/llvm/libbpf-dev), 'make libbpf' (dpkg-dev, libelf-dev, zlib1g-dev,
# pkg-config) and the tests need. Neither starts or enables a service (deploy/host/install-deps.sh).
DEB_RUN   := make libbpf1 iproute2 python3 python3-venv python3-pip ca-certificates
DEB_TEST  := gcc clang llvm libbpf-dev bpftool tmux dpkg-dev libelf-dev zlib1g-dev pkg-config \
	tshark tcpreplay victoria-metrics prometheus libcap2-bin buildah mmdebstrap uidmap
# 'make install' links the agent here so that it is on PATH (BINDIR= skips the link).
BINDIR    ?= /usr/local/bin
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)


# What 'make run' and the container targets watch: make run INTERFACE=ens1f0 MODE=tc
INTERFACE ?= eth0
MODE      ?= xdp
DEVICE    ?=
RUN_ARGS  ?=

# 'make build' leaves this launcher at the top level (git-ignored): sudo ./xtrace-catch run -i eth0.
# It runs $(VENV)'s xtrace-catch; a relative VENV is found beside the launcher, from any directory.
LAUNCHER  := xtrace-catch
launcher_venv = $(if $(filter /%,$(VENV)),$(VENV),$$here/$(VENV))

# Vendored libbpf (version and checksums pinned in vendor-libbpf/libbpf.pin).
LIBBPF_SO := vendor-libbpf/build/lib/libbpf.so.1

# Containers. DOCKER=podman works as is; DOCKER=buildah (no daemon) builds and smoke-tests
# (docker-base, docker-build, docker-test, docker-info, docker-clean) with vfs storage and
# chroot isolation unless STORAGE_DRIVER / BUILDAH_ISOLATION say otherwise.
DOCKER     ?= docker
IMAGE      ?= xtrace-catch:latest
# The same image plus curl, wget, ping, ip and tcpdump (Dockerfile stage 'debug'), for docker-shell.
IMAGE_DEBUG ?= xtrace-catch:debug
BASE_IMAGE ?= debian:bookworm-slim
# Never pull the base when it is there: 'make docker-base' may have made it locally.
DOCKER_BUILD_FLAGS ?= --pull=false
# CA bundle pip trusts inside the build (a build secret, in no layer): behind a TLS-inspecting
# proxy the host's bundle holds the proxy's CA. BUILD_CA= (empty) trusts the image's own.
BUILD_CA   ?= $(wildcard /etc/ssl/certs/ca-certificates.crt)
# Compose v2 ('docker compose'), podman compose or podman-compose; a missing piece is one line.
COMPOSE    := DOCKER='$(DOCKER)' bash deploy/container/tool.sh compose
# has-image exits 0 when the image is there, 1 when it is not, 2 when DOCKER is missing.
HAS_IMAGE  := DOCKER='$(DOCKER)' bash deploy/container/tool.sh has-image
ifneq (,$(findstring buildah,$(DOCKER)))
export STORAGE_DRIVER ?= vfs
export BUILDAH_ISOLATION ?= chroot
export BUILDAH_LAYERS ?= true
endif
# The agent's arguments per mode (compose reads XTRACE_MODE and XTRACE_ARGS).
mode_args = $(if $(filter tc,$(1)),-d both)$(if $(filter rdma nccl,$(1)),$(if $(DEVICE),--device $(DEVICE)))
compose_env = NETWORK_INTERFACE='$(INTERFACE)' XTRACE_MODE='$(1)' XTRACE_ARGS='$(strip $(call mode_args,$(1)) $(RUN_ARGS))' XTRACE_IMAGE='$(IMAGE)'
DOCKER_RUN_PRIV := --privileged --network host -v /sys/fs/bpf:/sys/fs/bpf -v /sys:/host/sys:ro \
	-e XTRACE_SYSFS_ROOT=/host/sys -v /run/xtrace-catch:/run/xtrace-catch

.PHONY: bench-cpus help deps deps-test wheelhouse bpf bpf-check install build test test-kernels bench clean libbpf run run-with-interface interfaces info \
	docker-base docker-build docker-build-debug docker-run docker-up docker-up-xdp docker-up-rdma docker-up-nccl docker-down \
	docker-logs docker-shell docker-info docker-test docker-clean docker-network-info image-test

help:
	@echo "make deps       apt-get the Debian packages running needs (no service started or enabled)"
	@echo "make deps-test  the same plus what building and the tests need (clang, tshark, victoria-metrics, ...)"
	@echo "make bpf        rebuild $(BPF_OBJ) from ebpf/ (clang)"
	@echo "make bpf-check  fail if the committed object differs from ebpf/"
	@echo "make install    create $(VENV), install xtrace-catch into it, link $(BINDIR)/xtrace-catch"
	@echo "make build      the wheel into dist/ (the BPF object inside), xtrace-catch installed into $(VENV)"
	@echo "                and ./$(LAUNCHER), which runs it from any directory: sudo ./$(LAUNCHER) run -i eth0"
	@echo "make wheelhouse the wheel and every dependency's into dist/wheelhouse/ (offline install)"
	@echo "make libbpf     build the pinned libbpf (vendor-libbpf/libbpf.pin) into vendor-libbpf/build/"
	@echo "make test       run the test suite (root: loads BPF, makes netns; with buildah, builds and"
	@echo "                smoke-tests the image: tests/test_image.py), ~10 min on 2 CPUs"
	@echo "make test-kernels  boot each kernel of tests/kernels.txt in KVM and run the kernel subset [KERNELS=6.1]"
	@echo "make bench      run the benchmarks in bench/ (writes bench/results/*.md)"
	@echo "make bench-cpus the many-CPU benchmark: guests with 2-128 vCPUs (CPUS=2,128), ~25 min"
	@echo "make run        run the agent from $(VENV): INTERFACE=$(INTERFACE) MODE=$(MODE) [DEVICE=mlx5_0] [RUN_ARGS=...]"
	@echo "make run-with-interface INTERFACE=IF   the same, but INTERFACE must be given"
	@echo "make interfaces list interfaces (state, link type, addresses, attached programs)"
	@echo "make info       versions: xtrace-catch, libbpf in use, kernel, BTF, Python"
	@echo "make clean      remove $(VENV), ./$(LAUNCHER), build outputs and the vendored libbpf build"
	@echo "Containers (DOCKER=$(DOCKER), IMAGE=$(IMAGE), BASE_IMAGE=$(BASE_IMAGE)):"
	@echo "make docker-base    build BASE_IMAGE locally with mmdebstrap from this machine's apt sources"
	@echo "make docker-build   build IMAGE from Dockerfile"
	@echo "make docker-build-debug  build IMAGE_DEBUG=$(IMAGE_DEBUG): IMAGE plus curl, wget, ping, ip, tcpdump"
	@echo "make docker-test    smoke-test IMAGE (--version reports the vendored libbpf, -h, -l, no compiler);"
	@echo "                    builds IMAGE first when it is not there"
	@echo "make image-test     docker-base + docker-build + docker-test (with BPF) using buildah (make test does it too)"
	@echo "make docker-run     run IMAGE on the host network: INTERFACE, MODE, DEVICE, RUN_ARGS"
	@echo "make docker-shell   a shell (privileged, host network) in IMAGE_DEBUG if it is there, else IMAGE;"
	@echo "                    IMAGE=... picks one: make traffic with curl, ping, wget in the debug image"
	@echo "make docker-info    the container tool's version and IMAGE"
	@echo "make docker-network-info  interfaces as the container sees them (host network)"
	@echo "make docker-up      agent + VictoriaMetrics + Grafana (docker-compose.yml), MODE=$(MODE)"
	@echo "make docker-up-xdp | docker-up-rdma | docker-up-nccl   the same with that mode"
	@echo "make docker-down | docker-logs | docker-clean   stop, follow the agent's log, remove IMAGE, IMAGE_DEBUG, volumes"

deps:
	$(SUDO) bash deploy/host/install-deps.sh $(DEB_RUN)

deps-test:
	$(SUDO) bash deploy/host/install-deps.sh $(DEB_RUN) $(DEB_TEST)

bpf: $(BPF_OBJ)

# DWARF is stripped (BTF and BTF.ext, which CO-RE needs, stay): smaller and free of paths.
define build_bpf
	$(CLANG) $(BPF_CFLAGS) $(BPF_EXTRA) -c ebpf/xtrace.bpf.c -o $(1)
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
	@if [ -n "$(BINDIR)" ]; then $(SUDO) bash deploy/host/link-bin.sh "$(CURDIR)/$(VENV)/bin/xtrace-catch" "$(BINDIR)/xtrace-catch"; fi

# The launcher resolves its own path (readlink -f), so it works from another directory, through
# a symlink and under sudo (whose PATH has no venv in it).
build: $(VENV)/bin/python
	$(VENV)/bin/pip wheel -q --no-deps -w dist .
	$(VENV)/bin/pip install -q -e .
	@printf '%s\n' '#!/bin/sh' \
		'# Made by make build: xtrace-catch from this checkout'"'"'s venv (make clean removes this file).' \
		'here=$$(dirname -- "$$(readlink -f -- "$$0")")' \
		'venv="$(launcher_venv)"' \
		'if [ ! -x "$$venv/bin/xtrace-catch" ]; then' \
		'    echo "$$0: $$venv/bin/xtrace-catch is missing: run make build in $$here" >&2; exit 1' \
		'fi' \
		'exec "$$venv/bin/xtrace-catch" "$$@"' > $(LAUNCHER).tmp
	chmod 0755 $(LAUNCHER).tmp
	mv $(LAUNCHER).tmp $(LAUNCHER)
	@echo "make build: ./$(LAUNCHER) runs $(VENV)/bin/xtrace-catch (e.g. sudo ./$(LAUNCHER) run -i eth0)"

# Everything an offline machine needs: pip install --no-index --find-links wheelhouse xtrace-catch
wheelhouse: $(VENV)/bin/python
	$(VENV)/bin/pip wheel -q -w dist/wheelhouse .

libbpf: $(LIBBPF_SO)

$(LIBBPF_SO): vendor-libbpf/libbpf.pin vendor-libbpf/build.sh
	bash vendor-libbpf/build.sh

$(VENV)/bin/xtrace-catch: | $(VENV)/bin/python
	$(VENV)/bin/pip install -q -e .

run: $(VENV)/bin/xtrace-catch
	$(VENV)/bin/xtrace-catch run -i $(INTERFACE) -m $(MODE) $(if $(filter tc,$(MODE)),-d both) $(if $(DEVICE),--device $(DEVICE)) $(RUN_ARGS)

run-with-interface:
	@if [ "$(origin INTERFACE)" = file ]; then echo "give the interface: make run-with-interface INTERFACE=ens1f0 [MODE=tc]" >&2; exit 2; fi
	$(MAKE) --no-print-directory run INTERFACE='$(INTERFACE)'

interfaces: $(VENV)/bin/xtrace-catch
	$(VENV)/bin/xtrace-catch interfaces

info: $(VENV)/bin/xtrace-catch
	@$(VENV)/bin/xtrace-catch --version
	@echo "python $$($(VENV)/bin/python -c 'import platform; print(platform.python_version())')"
	@if [ -e /sys/kernel/btf/vmlinux ]; then echo "kernel BTF: /sys/kernel/btf/vmlinux"; else echo "kernel BTF: missing (needs CONFIG_DEBUG_INFO_BTF=y)"; fi
	@if [ -e $(LIBBPF_SO) ]; then echo "vendored libbpf: $$(readlink -f $(LIBBPF_SO))"; else echo "vendored libbpf: not built ('make libbpf')"; fi

# The vendored libbpf (1.5) is built first: tests/test_links.py attaches through TCX links,
# which Debian 12's libbpf 1.1 cannot; the other tests choose their libbpf themselves.
test: $(VENV)/bin/python bpf-check libbpf
	$(VENV)/bin/pip install -q -e '.[test]'
	$(VENV)/bin/python -m pytest -v -p no:cacheprovider --durations=10 tests

# Boot each kernel of tests/kernels.txt in a KVM guest (KERNELS=6.1,6.12 picks some) and run the
# kernel subset in it: one line per kernel; non-zero if any fails. Needs qemu-system-x86 and
# busybox-static (installed here) and a /dev/kvm that boots stock kernels.
KERNELS ?=
test-kernels: $(VENV)/bin/python bpf-check libbpf
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends qemu-system-x86 busybox-static cpio
	$(VENV)/bin/pip install -q -e '.[test]'
	KERNELS='$(KERNELS)' $(VENV)/bin/python tests/kvm.py test

bench: $(VENV)/bin/python
	$(VENV)/bin/pip install -q -e '.[test]'
	$(VENV)/bin/python bench/run.py

# Step 10: guests with 2, 16, 64 and 128 vCPUs (CPUS=2,128 picks some) boot Debian 12's kernel and
# measure the flow map's memory, the collector's read, and the agent (CPU, RSS, exactness).
# KVM where it runs stock kernels, else qemu's TCG (XTRACE_ACCEL=kvm|tcg forces one). ~25 min under TCG.
bench-cpus: $(VENV)/bin/python
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends qemu-system-x86 busybox-static cpio
	$(VENV)/bin/pip install -q -e '.[test]'
	$(VENV)/bin/python bench/cpus.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache vendor-libbpf/build vendor-libbpf/src
	rm -f $(LAUNCHER) $(LAUNCHER).tmp

# --- containers -------------------------------------------------------------------------
docker-base:
	DOCKER='$(DOCKER)' bash deploy/container/base-image.sh $(BASE_IMAGE)

# $(call docker_build,TAG,STAGE). IMAGE is the stage 'final', which is also the default target
# (the Dockerfile's last stage is final, nothing added); named, because buildah 1.28 leaves a
# working container behind for a last stage that has no instructions.
docker_build = DOCKER='$(DOCKER)' bash deploy/container/tool.sh build $(DOCKER_BUILD_FLAGS) \
	--secret id=build_ca,src=$(or $(BUILD_CA),/dev/null) --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	--target $(2) -t $(1) -f Dockerfile .

docker-build:
	$(call docker_build,$(IMAGE),final)

docker-build-debug:
	$(call docker_build,$(IMAGE_DEBUG),debug)

docker-test:
	@$(HAS_IMAGE) '$(IMAGE)' || { [ $$? = 1 ] || exit 2; echo "make docker-test: $(IMAGE) is not there: building it (make docker-build)"; \
		$(call docker_build,$(IMAGE),final); }
	DOCKER='$(DOCKER)' bash deploy/container/smoke-test.sh $(IMAGE)

# Build the real image without a daemon (mmdebstrap base, buildah bud with vfs storage and
# chroot isolation) and smoke-test it, including one interval on a veth in test namespaces.
# 'make test' does the same through tests/test_image.py (and checks the debug image too).
image-test:
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends buildah mmdebstrap uidmap
	$(MAKE) docker-base DOCKER=buildah
	$(MAKE) docker-build DOCKER=buildah
	SMOKE_BPF=1 $(MAKE) docker-test DOCKER=buildah

docker-run:
	$(DOCKER) run --rm -it $(DOCKER_RUN_PRIV) -e NETWORK_INTERFACE=$(INTERFACE) $(IMAGE) \
		run -m $(MODE) $(call mode_args,$(MODE)) $(RUN_ARGS)

# IMAGE_DEBUG when it is there and IMAGE was not given.
docker-shell:
	@img='$(IMAGE)'; \
	if [ "$(origin IMAGE)" = file ] && $(HAS_IMAGE) '$(IMAGE_DEBUG)'; then img='$(IMAGE_DEBUG)'; \
	elif [ "$(origin IMAGE)" = file ]; then echo "make docker-shell: $(IMAGE_DEBUG) is not there, so $(IMAGE) (no curl, ping, wget): make docker-build-debug adds them"; fi; \
	echo "make docker-shell: $$img"; \
	exec $(DOCKER) run --rm -it $(DOCKER_RUN_PRIV) --entrypoint /bin/bash "$$img"

docker-info:
	$(DOCKER) version
	$(DOCKER) images $(IMAGE)

docker-network-info:
	$(DOCKER) run --rm --privileged --network host $(IMAGE) interfaces

docker-up:
	$(call compose_env,$(MODE)) $(COMPOSE) up -d

docker-up-xdp docker-up-rdma docker-up-nccl: docker-up-%:
	$(call compose_env,$*) $(COMPOSE) up -d

docker-down:
	$(COMPOSE) down

docker-logs:
	$(COMPOSE) logs -f agent

docker-clean:
	-$(COMPOSE) down -v
	-$(DOCKER) rmi $(IMAGE)
	-$(DOCKER) rmi $(IMAGE_DEBUG)

# The long run of tests/test_soak.py: 10 minutes of churning flows (the normal suite runs it for 60 s).
.PHONY: soak
soak: $(VENV)/bin/python
	$(VENV)/bin/pip install -q -e '.[test]'
	XTRACE_SOAK_SECONDS=600 $(VENV)/bin/python -m pytest -q -m soak tests
