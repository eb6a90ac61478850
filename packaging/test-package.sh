#!/usr/bin/env bash
# Checks the packages `make package` built: lintian, the rpm's files,
# scripts and dependencies, systemd-analyze verify of the units, and an
# install and purge of the .deb on this machine. Run as root (CI does).
set -euo pipefail
version=$1
deb=dist/driftgate_${version}_amd64.deb
rpm=dist/driftgate-${version}.x86_64.rpm
fail() { echo "test-package: FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }

[ "$(id -u)" = 0 ] || fail "needs root (dpkg -i)"
for tool in lintian rpm dpkg systemd-analyze; do
	command -v $tool >/dev/null || fail "$tool missing (apt-get install lintian rpm)"
done

step "lintian $deb (accepted findings: packaging/lintian-overrides)"
lintian --fail-on error,warning "$deb" || fail "lintian reported errors or warnings"

step "rpm -qpl / -qpi / --scripts / -qpR $rpm"
want_files="/etc/driftgate/driftgate.yaml
/usr/bin/driftgate
/usr/lib/systemd/system/driftgate-receive@.service
/usr/lib/systemd/system/driftgate.service
/usr/lib/sysusers.d/driftgate.conf
/usr/share/doc/driftgate/README.md
/usr/share/doc/driftgate/election.md
/usr/share/doc/driftgate/frame.md
/usr/share/doc/driftgate/monitoring/driftgate-alerts.yml
/usr/share/doc/driftgate/monitoring/driftgate-dashboard.json
/usr/share/doc/driftgate/operations.md
/usr/share/licenses/driftgate/LICENSE"
got_files=$(rpm -qpl "$rpm" 2>/dev/null)
[ "$got_files" = "$want_files" ] || fail "rpm files differ:
$(diff <(echo "$want_files") <(echo "$got_files"))"
rpm -qpi "$rpm" 2>/dev/null | grep -q "^Version *: ${version}$" || fail "rpm version is not $version"
scripts=$(rpm -qp --scripts "$rpm" 2>/dev/null)
for s in "systemctl --no-reload preset driftgate.service" "disable --now driftgate.service" "try-restart driftgate.service" "systemd-sysusers driftgate.conf"; do
	grep -qF -- "$s" <<<"$scripts" || fail "rpm scriptlets lack: $s"
done
grep -q "systemctl start" <<<"$scripts" && fail "rpm scriptlets start the service on installation"
rpm -qpR "$rpm" 2>/dev/null | grep -qx systemd || fail "rpm does not depend on systemd"
rpm -qp --configfiles "$rpm" 2>/dev/null | grep -qx /etc/driftgate/driftgate.yaml || fail "the configuration is not a config file in the rpm"

step "dpkg -i $deb"
dpkg --purge driftgate >/dev/null 2>&1 || true
dpkg -i "$deb"
getent passwd driftgate >/dev/null || fail "no driftgate user"
[ "$(getent passwd driftgate | cut -d: -f7)" = /usr/sbin/nologin ] || fail "driftgate user has a login shell"
check_stat() { # path want
	got=$(stat -c '%a %U:%G' "$1")
	[ "$got" = "$2" ] || fail "$1 is $got, want $2"
}
check_stat /usr/bin/driftgate "755 root:root"
check_stat /etc/driftgate/driftgate.yaml "640 root:driftgate"
check_stat /var/lib/driftgate "750 driftgate:driftgate"
check_stat /usr/lib/systemd/system/driftgate.service "644 root:root"
dpkg-query -W -f='${Conffiles}\n' driftgate | grep -q /etc/driftgate/driftgate.yaml || fail "the configuration is not a conffile"
got=$(/usr/bin/driftgate version)
case "$got" in "driftgate $version "*) ;; *) fail "driftgate version printed '$got', want version $version" ;; esac
# The shipped configuration names no VIP (installing touches no interface):
# it is refused, saying so, and valid once the commented VIP is taken in.
out=$(/usr/bin/driftgate config check /etc/driftgate/driftgate.yaml 2>&1) && fail "the shipped configuration validates without a VIP"
grep -q "vips: none is set" <<<"$out" || fail "the shipped configuration is refused for another reason: $out"
/usr/bin/driftgate config example | grep -q '^vips: \[\]$' || fail "config example is not the shipped file"

step "systemd-analyze verify"
mkdir -p /etc/driftgate
echo 'DRIFTGATE_RECEIVE_ARGS="--group 239.255.0.1:5001 --deliver stdout"' > /etc/driftgate/receive-verify.env
ln -sf /usr/lib/systemd/system/driftgate-receive@.service /tmp/driftgate-receive@verify.service
out=$(systemd-analyze verify /usr/lib/systemd/system/driftgate.service /tmp/driftgate-receive@verify.service 2>&1) || fail "systemd-analyze verify: $out"
# Only complaints about units of this machine we do not ship are tolerated.
if grep -v -e '^$' <<<"$out" | grep -i driftgate; then fail "systemd-analyze verify reported the above"; fi
rm -f /tmp/driftgate-receive@verify.service /etc/driftgate/receive-verify.env

step "dpkg --remove driftgate: the state directory and the configuration stay"
dpkg --remove driftgate
[ -d /var/lib/driftgate ] || fail "remove deleted /var/lib/driftgate (only purge may)"
[ -e /etc/driftgate/driftgate.yaml ] || fail "remove deleted the configuration"
[ ! -e /usr/bin/driftgate ] || fail "remove left /usr/bin/driftgate"

step "dpkg --purge driftgate"
dpkg --purge driftgate
for p in /usr/bin/driftgate /etc/driftgate/driftgate.yaml /var/lib/driftgate /usr/lib/systemd/system/driftgate.service; do
	[ ! -e "$p" ] || fail "$p is still there after purge"
done
echo "test-package: ok ($deb, $rpm)"
