#!/usr/bin/env bash
# Debian packages the tests and the demo need, installed only when missing (apt-get update first,
# as root or through sudo). `make deps` runs this; PG_MAJOR=N forces the PostgreSQL major, else it
# is the newest already installed with plpython3u, else the one Debian's `postgresql` package
# depends on (15 on Debian 12, 17 on Debian 13).
# chromium: the dashboard's browser tests drive it with Playwright (never `playwright install`).
# systemd: its systemd-analyze checks deploy/pgwebhooks.service (no service is started).
set -eu

if [ "$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi
major="${PG_MAJOR:-}"
updated=
if [ -z "$major" ]; then
	major=$(ls -d /usr/lib/postgresql/*/lib/plpython3.so 2>/dev/null \
		| sed 's|^/usr/lib/postgresql/\([0-9]*\)/.*|\1|' | sort -n | tail -1)
fi
if [ -z "$major" ]; then
	$sudo apt-get update -qq
	updated=1
	major=$(apt-cache depends postgresql | sed -n 's/^ *Depends: postgresql-\([0-9][0-9]*\)$/\1/p' | head -1)
fi
if [ -z "$major" ]; then
	echo "make deps: apt-cache offers no postgresql-N package" >&2
	exit 1
fi
pkgs="postgresql-$major postgresql-plpython3-$major postgresql-$major-pgtap libtap-parser-sourcehandler-pgtap-perl"
pkgs="$pkgs chromium systemd"
missing=$(for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || echo "$p"
done)
if [ -n "$missing" ]; then
	echo "installing Debian packages: $missing"
	[ -n "$updated" ] || $sudo apt-get update -qq
	# shellcheck disable=SC2086  # one word per package
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing
fi
