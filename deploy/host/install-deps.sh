#!/usr/bin/env bash
# `make deps` / `make deps-test`: apt-get install Debian packages without starting or enabling
# any service. victoria-metrics and prometheus ship units that their postinst enables and
# starts; the tests start their own on 127.0.0.1 with a temporary data directory, and a host
# we only run on should not gain a TSDB. So: a policy-rc.d that denies every start while apt
# runs (an existing one is left as it is), and every unit of a package this run installed is
# disabled again. Packages installed before are not touched.
#
# usage: install-deps.sh PACKAGE...   (env APT_GET, DPKG_QUERY, POLICY_RC_D, SYSTEMD_HELPER, UPDATE_RC_D:
# the tools, replaceable for tests)
set -euo pipefail
apt_get=${APT_GET:-apt-get}
policy=${POLICY_RC_D:-/usr/sbin/policy-rc.d}
helper=${SYSTEMD_HELPER:-deb-systemd-helper}
dpkg_query=${DPKG_QUERY:-dpkg-query}
update_rc_d=${UPDATE_RC_D:-update-rc.d}

installed() { "$dpkg_query" -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

new=()
for p in "$@"; do installed "$p" || new+=("$p"); done

made_policy=
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# xtrace-catch install-deps.sh: no service starts while packages install\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  made_policy=1
fi
trap '[ -z "$made_policy" ] || rm -f "$policy"' EXIT

"$apt_get" update -q
DEBIAN_FRONTEND=noninteractive "$apt_get" install -y -q --no-install-recommends "$@"

for p in ${new[@]+"${new[@]}"}; do
  for unit in $("$dpkg_query" -L "$p" 2>/dev/null | grep -E '^(/usr)?/lib/systemd/system/[^/]+\.(service|timer|socket)$' \
                | xargs -r -n1 basename | sort -u); do
    if command -v "$helper" >/dev/null 2>&1; then
      "$helper" disable "$unit" >/dev/null 2>&1 || true
    fi
    if [ -x "/etc/init.d/${unit%.*}" ] && command -v "$update_rc_d" >/dev/null 2>&1; then
      "$update_rc_d" "${unit%.*}" disable >/dev/null 2>&1 || true
    fi
    echo "install-deps: $unit (from $p) installed, not started, not enabled"
  done
done
