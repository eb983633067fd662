#!/usr/bin/env bash
# The container tool behind make's docker-* targets: `tool.sh compose ARGS...` and
# `tool.sh build ARGS...` with DOCKER=docker (Compose v2 plugin, BuildKit), DOCKER=podman
# (podman compose or podman-compose) or DOCKER=buildah (build only). What is missing is said
# in one line naming the package to install, instead of the tool's own "unknown shorthand
# flag" or legacy-builder errors. Exit 2 then.
# `tool.sh has-image IMAGE` exits 0 when IMAGE is in the tool's local storage, 1 when not.
set -euo pipefail
tool=${DOCKER:-docker}
what=${1:?usage: tool.sh compose|build|has-image ARGS...}
shift
name=$(basename -- "${tool%% *}")

fail() { echo "make: $*" >&2; exit 2; }

command -v "$tool" >/dev/null 2>&1 ||
  fail "$tool not found: install docker.io (Debian) or Docker's docker-ce, or podman; or set DOCKER=podman"

case "$what:$name" in
compose:*podman*)
  if "$tool" compose version >/dev/null 2>&1; then exec "$tool" compose "$@"; fi
  command -v podman-compose >/dev/null 2>&1 && exec podman-compose "$@"
  fail "podman has no compose provider: install podman-compose (apt-get install podman-compose)" ;;
compose:*buildah*)
  fail "buildah builds images but runs no compose file: use DOCKER=docker or DOCKER=podman" ;;
compose:*)
  "$tool" compose version >/dev/null 2>&1 ||
    fail "'$tool compose' (Docker Compose v2) is missing: install docker-compose-plugin (Docker's apt repository; Debian 13: apt-get install docker-compose), or use DOCKER=podman"
  exec "$tool" compose "$@" ;;
build:*podman* | build:*buildah*)
  exec "$tool" build "$@" ;;
build:*)
  if ! "$tool" buildx version >/dev/null 2>&1; then
    # Docker before 23 has BuildKit inside the daemon: DOCKER_BUILDKIT=1 turns it on.
    major=$("$tool" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1 || true)
    if [[ $major =~ ^[0-9]+$ ]] && [ "$major" -lt 23 ]; then
      DOCKER_BUILDKIT=1 exec "$tool" build "$@"
    fi
    fail "BuildKit is missing ('$tool buildx' does not run; the Dockerfile's build secret needs it): install docker-buildx-plugin (Docker's apt repository; Debian 13: apt-get install docker-buildx), or use DOCKER=podman"
  fi
  exec "$tool" build "$@" ;;
has-image:*)
  image=${1:?usage: tool.sh has-image IMAGE}
  if [[ $name == *buildah* ]]; then inspect=(inspect --type image); else inspect=(image inspect); fi
  "$tool" "${inspect[@]}" "$image" >/dev/null 2>&1 || exit 1 ;;
*)
  fail "tool.sh: unknown action $what (compose, build or has-image)" ;;
esac
