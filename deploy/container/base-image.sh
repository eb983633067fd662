#!/usr/bin/env bash
# Build a Debian base image (default: the Dockerfile's debian:bookworm-slim) locally with
# mmdebstrap and import it, for machines that cannot pull images but can reach Debian's
# archive. The packages come from the archive this machine's apt sources already use.
#
# usage: DOCKER=docker|podman|buildah deploy/container/base-image.sh IMAGE [SUITE]
# Needs root, mmdebstrap, and DOCKER (buildah: 'buildah from scratch' + add + commit, since
# buildah has no 'import'). Environment: MIRROR_SOURCES='deb URI SUITE COMPONENTS' lines
# instead of the ones derived from the apt sources.
set -euo pipefail

image=${1:?usage: base-image.sh IMAGE [SUITE]}
suite=${2:-bookworm}
docker=${DOCKER:-docker}

die() { echo "base-image: $*" >&2; exit 1; }
command -v mmdebstrap >/dev/null || die "mmdebstrap not found: apt-get install mmdebstrap"

# One-line apt sources for SUITE, SUITE-updates and SUITE-security, from the URIs this
# machine's apt configuration (sources.list or deb822 .sources) gives for them.
sources=${MIRROR_SOURCES:-}
if [ -z "$sources" ]; then
    sources=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 'Identifier: Packages' |
        awk -v s="$suite" '$2 == s || $2 == s "-updates" || $2 == s "-security" {
            key = $1 " " $2
            if (!(key in comps)) { order[n++] = key; comps[key] = $3 }
            else if (index(" " comps[key] " ", " " $3 " ") == 0) comps[key] = comps[key] " " $3
        }
        END { for (i = 0; i < n; i++) print "deb " order[i] " " comps[order[i]] }')
    [ -n "$sources" ] || die "the apt sources name no '$suite' archive (run 'apt-get update'), or set MIRROR_SOURCES"
fi
echo "base-image: $image from:"
echo "$sources" | sed 's/^/  /'

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Like the official -slim images: no manuals, docs (copyright kept), locales or info pages;
# /usr merged by mmdebstrap's hook rather than the usrmerge package (which pulls in perl).
echo "$sources" | mmdebstrap --variant=apt --quiet \
    --aptopt='Acquire::Languages "none"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --skip=output/dev \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    "$suite" "$work/rootfs.tar" -

case $(basename "${docker%% *}") in
    buildah)
        ctr=$($docker from scratch)
        $docker add "$ctr" "$work/rootfs.tar" /
        $docker config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            --cmd bash "$ctr"
        $docker commit --rm "$ctr" "$image"
        ;;
    *)
        $docker import --change 'CMD ["bash"]' "$work/rootfs.tar" "$image"
        ;;
esac
echo "base-image: $image ready"
