#!/usr/bin/env bash
# `make install`: put the venv's xtrace-catch on PATH as a symlink, LINK -> TARGET. An existing
# file that is not a symlink (another install) is left alone, with one line saying what to run.
# usage: link-bin.sh TARGET LINK
set -euo pipefail
target=${1:?usage: link-bin.sh TARGET LINK}
link=${2:?usage: link-bin.sh TARGET LINK}
if [ -e "$link" ] && [ ! -L "$link" ]; then
  echo "make: $link exists and is not a link: left alone; run $target" >&2
  exit 0
fi
if mkdir -p "$(dirname "$link")" 2>/dev/null && ln -sfn "$target" "$link" 2>/dev/null; then
  echo "xtrace-catch: $link -> $target"
else
  echo "make: cannot write $link (run as root, or make install BINDIR=DIR); run $target" >&2
fi
