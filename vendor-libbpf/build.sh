#!/usr/bin/env bash
# Build the libbpf pinned in libbpf.pin into vendor-libbpf/build/{lib,include}.
#
# The source is Debian's source package (upstream tarball + Debian's patches), fetched with
# apt-get from the Debian archive that this machine's apt sources already use: the script
# adds a deb-src entry for the pinned suite in a private apt state under vendor-libbpf/src/
# and never changes /etc/apt. Each downloaded file must match its pinned sha256 before it
# is unpacked. Needs: apt, dpkg-dev (dpkg-source), make, gcc, libelf-dev, zlib1g-dev,
# pkg-config ('make deps-test' installs them).
#
# Environment: LIBBPF_ARCHIVE=URI overrides the archive (default: the one the apt sources
# use for this release); JOBS=N parallel make jobs (default: nproc).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
pin_file=$here/libbpf.pin
src=$here/src
out=$here/build

die() { echo "vendor-libbpf: $*" >&2; exit 1; }

declare -A pin=()
while IFS= read -r line || [ -n "$line" ]; do
    case $line in ''|'#'*) continue ;; esac
    [[ $line =~ ^([A-Z0-9_]+)=([^[:space:]]+)$ ]] || die "$pin_file: bad line '$line' (want KEY=VALUE)"
    pin[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]}
done <"$pin_file"
for k in PACKAGE VERSION UPSTREAM_VERSION SUITE DSC_SHA256 ORIG_SHA256 DEBIAN_SHA256; do
    [ -n "${pin[$k]:-}" ] || die "$pin_file: $k is missing"
done
pkg=${pin[PACKAGE]} ver=${pin[VERSION]} up=${pin[UPSTREAM_VERSION]}

if [ -f "$out/PIN" ] && cmp -s "$out/PIN" "$pin_file" && [ -e "$out/lib/libbpf.so.1" ]; then
    echo "vendor-libbpf: $pkg $ver already built in $out"
    exit 0
fi

for tool in apt-get dpkg-source make cc pkg-config sha256sum; do
    command -v "$tool" >/dev/null || die "$tool not found: run 'make deps-test' (Debian: apt-get install dpkg-dev make gcc libelf-dev zlib1g-dev pkg-config)"
done
pkg-config --exists libelf zlib || die "libelf/zlib headers missing: apt-get install libelf-dev zlib1g-dev"

# The archive: the URI the apt sources give for this machine's own release (bookworm, ...).
archive=${LIBBPF_ARCHIVE:-}
if [ -z "$archive" ]; then
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [ -n "$codename" ] || die "cannot tell the Debian release from /etc/os-release; set LIBBPF_ARCHIVE=<archive URI>"
    archive=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null |
        awk -v r="$codename" '$2 == r { print $1; exit }')
    [ -n "$archive" ] || die "no apt source for '$codename' found (run 'apt-get update' first), or set LIBBPF_ARCHIVE=<archive URI>"
fi

apt_dir=$src/apt
rm -rf "$apt_dir"
mkdir -p "$apt_dir/etc" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
{
    echo "Types: deb-src"
    echo "URIs: $archive"
    echo "Suites: ${pin[SUITE]}"
    echo "Components: main"
    if [ -f "$keyring" ]; then echo "Signed-By: $keyring"; fi
} >"$apt_dir/etc/libbpf-src.sources"
apt_opts=(
    -o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$apt_dir/etc"
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
    -o "Debug::NoLocking=1" -o "Acquire::Languages=none"
)
# As root apt would fetch as _apt, which cannot write into the work tree. Integrity does not
# rest on that sandbox: the signed Sources index and the pinned sha256s check every file.
if [ "$(id -u)" = 0 ]; then apt_opts+=(-o "APT::Sandbox::User=root"); fi

echo "vendor-libbpf: fetching source package $pkg $ver (${pin[SUITE]}) from $archive"
apt-get "${apt_opts[@]}" -q update >/dev/null || die "apt-get update of the ${pin[SUITE]} deb-src index failed"
dl=$src/download
rm -rf "$dl"
mkdir -p "$dl"
(cd "$dl" && apt-get "${apt_opts[@]}" -q source --download-only "$pkg=$ver") ||
    die "apt-get source $pkg=$ver failed: is $ver still in ${pin[SUITE]}? (apt-cache showsrc $pkg)"

dsc=${pkg}_${ver}.dsc
orig=${pkg}_${up}.orig.tar.gz
deb=${pkg}_${ver}.debian.tar.xz
(cd "$dl" && sha256sum -c --strict - <<EOF
${pin[DSC_SHA256]}  $dsc
${pin[ORIG_SHA256]}  $orig
${pin[DEBIAN_SHA256]}  $deb
EOF
) || die "checksum mismatch: the downloaded files are not the ones pinned in $pin_file"

tree=$src/$pkg-$up
rm -rf "$tree"
# dpkg-source checks the files against the .dsc again and applies Debian's patches.
dpkg-source --require-strong-checksums -x "$dl/$dsc" "$tree" >/dev/null

rm -rf "$out"
jobs=${JOBS:-$(nproc)}
echo "vendor-libbpf: building $pkg $up into $out"
make -s -C "$tree/src" -j"$jobs" BUILD_STATIC_ONLY= OBJDIR="$src/obj" \
    PREFIX="$out" LIBDIR="$out/lib" INCLUDEDIR="$out/include" install
rm -f "$out/lib/libbpf.a"
cp "$pin_file" "$out/PIN"
echo "vendor-libbpf: $(readlink -f "$out/lib/libbpf.so.1") and headers in $out/include/bpf"
