#!/usr/bin/env bash
# Smoke test of the agent image: --version reports the vendored libbpf, -h and -l work, the
# entrypoint is xtrace-catch, and the image holds no compiler and no pip.
#
# usage: DOCKER=docker|podman|buildah deploy/container/smoke-test.sh IMAGE
# With SMOKE_BPF=1 (root) it also loads the BPF program: it makes two network namespaces
# joined by a veth pair (addresses from 198.51.100.0/24, a documentation range), runs
# 'xtrace-catch run -m tc -d both' inside the container on one end while the other end sends
# it UDP datagrams, checks the attach line and the UDP flow, and removes both namespaces.
# Nothing in the host's own network namespace is touched. Needs python3 and iproute2.
set -euo pipefail

image=${1:?usage: smoke-test.sh IMAGE}
docker=${DOCKER:-docker}
here=$(cd "$(dirname "$0")" && pwd)
tool=$(basename "${docker%% *}")
fails=0

pin_version=$(sed -n 's/^UPSTREAM_VERSION=//p' "$here/../../vendor-libbpf/libbpf.pin")
want_libbpf="libbpf ${pin_version%.*} (vendored:"

ctr=
ns_a=xtsmoke-a-$$ ns_b=xtsmoke-b-$$
cleanup() {
    if [ -n "$ctr" ]; then $docker rm "$ctr" >/dev/null 2>&1 || true; fi
    ip netns del "$ns_a" 2>/dev/null || true
    ip netns del "$ns_b" 2>/dev/null || true
}
trap cleanup EXIT

if [ "$tool" = buildah ]; then
    # buildah runs commands in a working container; 'podman run' would also do, where
    # the host lets it set rlimits.
    ctr=$($docker from --pull=never --quiet "$image")
    run() { $docker run "$ctr" -- xtrace-catch "$@"; }
    sh_in() { $docker run "$ctr" -- sh -c "$1"; }
    entrypoint=$($docker inspect --format '{{.OCIv1.Config.Entrypoint}}' "$image")
else
    run() { $docker run --rm "$image" "$@"; }
    sh_in() { $docker run --rm --entrypoint sh "$image" -c "$1"; }
    entrypoint=$($docker image inspect --format '{{.Config.Entrypoint}}' "$image")
fi

check() {  # check NAME EXPECTED-SUBSTRING OUTPUT
    if [[ $3 == *"$2"* ]]; then
        echo "ok   $1"
    else
        echo "FAIL $1: expected '$2' in:" >&2
        printf '%s\n' "$3" | sed 's/^/     /' >&2
        fails=$((fails + 1))
    fi
}

check "entrypoint is xtrace-catch" "xtrace-catch" "$entrypoint"
out=$(run --version 2>&1) || true
check "--version" "$want_libbpf" "$out"
printf '%s\n' "$out" | sed 's/^/     /'
out=$(run -h 2>&1) || true
check "-h" "Usage: xtrace-catch" "$out"
out=$(run -l 2>&1) || true
check "-l" "INTERFACE" "$out"
out=$(sh_in 'for c in cc gcc clang ld as make; do command -v "$c" && echo "compiler: $c"; done
             python3 -m pip --version >/dev/null 2>&1 && echo "pip: present"; echo checked' 2>&1) || true
check "no compiler, no pip" "checked" "$out"
if [[ $out == *compiler:* || $out == *pip:* ]]; then
    echo "FAIL the image holds build tools: $out" >&2
    fails=$((fails + 1))
fi

if [ "${SMOKE_BPF:-0}" = 1 ]; then
    [ "$(id -u)" = 0 ] || { echo "SMOKE_BPF=1 needs root (it makes network namespaces)" >&2; exit 1; }
    ip netns add "$ns_a"
    ip netns add "$ns_b"
    ip link add xts0 netns "$ns_a" type veth peer name xts1 netns "$ns_b"
    ip -n "$ns_a" addr add 198.51.100.1/24 dev xts0
    ip -n "$ns_b" addr add 198.51.100.2/24 dev xts1
    ip -n "$ns_a" link set xts0 up
    ip -n "$ns_b" link set xts1 up
    # UDP to the discard port from the other namespace, ten a second until the agent is done.
    ip netns exec "$ns_b" python3 -c '
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(300):
    s.sendto(b"xtrace smoke", ("198.51.100.1", 9))
    time.sleep(0.1)' &
    sender=$!
    agent=(xtrace-catch run -i xts0 -m tc -d both -t 1000 --count 4 --output json)
    if [ "$tool" = buildah ]; then
        # With chroot isolation the container shares its caller's network namespace.
        # The capabilities the compose file and the DaemonSet grant, no more, and as there no
        # seccomp profile: the default one allows bpf(2) only with CAP_SYS_ADMIN.
        bpf_ctr=$($docker from --pull=never --quiet --security-opt seccomp=unconfined "$image")
        out=$(ip netns exec "$ns_a" $docker run --cap-add CAP_BPF --cap-add CAP_PERFMON --cap-add CAP_NET_ADMIN \
            "$bpf_ctr" -- "${agent[@]}" 2>&1) || true
        $docker rm "$bpf_ctr" >/dev/null
    else
        # --network ns:PATH is podman's; docker cannot join a named namespace.
        out=$($docker run --rm --cap-add BPF --cap-add PERFMON --cap-add NET_ADMIN --security-opt seccomp=unconfined \
            --network "ns:/run/netns/$ns_a" "$image" "${agent[@]:1}" 2>&1) || true
    fi
    kill "$sender" 2>/dev/null || true
    wait "$sender" 2>/dev/null || true
    printf '%s\n' "$out" | grep -v '"record":"summary"' | sed 's/^/     /'
    check "BPF attach in the container" "TC program attached to xts0 (ingress, egress)" "$out"
    check "UDP flow counted" '"src_ip":"198.51.100.2","dst_ip":"198.51.100.1","src_port":' "$out"
fi

if [ "$fails" -gt 0 ]; then
    echo "smoke test of $image: $fails check(s) failed" >&2
    exit 1
fi
echo "smoke test of $image: passed"
