# xtrace-catch agent image. Stages:
#   builder  checks the committed BPF object against ebpf/ (make bpf-check), builds the
#            vendored libbpf (make libbpf, the version pinned in vendor-libbpf/libbpf.pin)
#            and the wheel (make build), and installs the wheel into a venv;
#   final    Debian slim + Debian's python3 + that venv + libbpf.so; no compiler, no pip,
#            nothing fetched at start. The default target: the last stage is final itself;
#   debug    final + curl, wget, ping, ip and tcpdump, to make and watch traffic from a shell
#            in the container (make docker-build-debug: --target debug -t xtrace-catch:debug).
# The base is a build argument so a locally made Debian image can stand in for the
# registry's ('make docker-base' builds one with mmdebstrap under this name).
#   docker build -t xtrace-catch .        (make docker-build; DOCKER=podman|buildah also work)
#   docker build --target debug -t xtrace-catch:debug .   (make docker-build-debug)
#   docker run --rm --privileged --network host -v /sys/fs/bpf:/sys/fs/bpf xtrace-catch -i eth0
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS builder
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update -q \
    && apt-get install -y -q --no-install-recommends \
        make gcc libc6-dev clang llvm libbpf-dev \
        dpkg-dev libelf-dev zlib1g-dev pkg-config \
        python3 python3-venv ca-certificates
WORKDIR /src
COPY . .
# The image ships the committed object; this fails the build if it is stale.
RUN make bpf-check
# apt fetches libbpf's Debian source package; build.sh checks the pinned sha256s.
RUN make libbpf
# pip reaches PyPI; behind a TLS-inspecting proxy, pass its CA bundle as the build secret
# 'build_ca' (make docker-build passes BUILD_CA, by default the host's bundle). The secret
# is mounted for this step only and is in no layer.
# The runtime venv gets no pip: the build venv's pip installs into it.
RUN --mount=type=secret,id=build_ca \
    if [ -s /run/secrets/build_ca ]; then export PIP_CERT=/run/secrets/build_ca; fi \
    && make build VENV=/opt/build \
    && python3 -m venv --without-pip /opt/xtrace \
    && /opt/build/bin/pip --python /opt/xtrace/bin/python install -q --no-cache-dir dist/*.whl \
    && pkg=$(/opt/xtrace/bin/python -I -c 'import pathlib, xtrace_catch; print(pathlib.Path(xtrace_catch.__file__).parent)') \
    && install -D -m 0755 "$(readlink -f vendor-libbpf/build/lib/libbpf.so.1)" "$pkg/lib/libbpf.so.1" \
    && strip --strip-unneeded "$pkg/lib/libbpf.so.1" \
    && /opt/xtrace/bin/xtrace-catch --version | tee /dev/stderr | grep -q "(vendored: $pkg/lib/"

FROM ${BASE_IMAGE} AS final
ARG DEBIAN_FRONTEND=noninteractive
# libbpf.so needs libelf1 and zlib1g; ca-certificates for an https push URL.
RUN apt-get update -q \
    && apt-get install -y -q --no-install-recommends python3 libelf1 zlib1g ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
# The loader finds libbpf.so.1 in the installed package's lib/ (xtrace_catch/kernel/libbpf.py);
# XTRACE_LIBBPF=/path still overrides it.
COPY --from=builder /opt/xtrace /opt/xtrace
ENV PATH=/opt/xtrace/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
LABEL org.opencontainers.image.title="xtrace-catch" \
      org.opencontainers.image.description="eBPF (XDP/TC) flow monitor for RoCE/InfiniBand GPU clusters" \
      org.opencontainers.image.licenses="MIT AND (GPL-2.0-only OR BSD-2-Clause)"
# Runs as root: loading BPF needs root or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON.
# SIGTERM (docker stop) prints the last interval, detaches and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["xtrace-catch"]
CMD ["run"]

# Only with --target debug (make docker-build-debug): curl and wget (HTTP, VictoriaMetrics'
# API), ping (ICMP), ip (addresses, routes, attached programs), tcpdump (to compare counts).
FROM final AS debug
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update -q \
    && apt-get install -y -q --no-install-recommends curl wget iputils-ping iproute2 tcpdump \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

# The default target is the last stage: the slim image above, nothing added.
FROM final
