#!/usr/bin/env bash
# The packages under a real systemd (make test-systemd, root): a minimal
# Debian 12 (debootstrap, cached) booted with systemd-nspawn --boot in a
# network namespace of its own, the built .deb installed, a dev-mode Consul
# as consul.service, and the agent checked as an operator would use it.
# Every step that fails names what it saw; the container, its namespaces
# and its files are removed however the script ends.
#
# Usage: packaging/test-systemd.sh VERSION CONSUL_BINARY
set -euo pipefail
version=$1
consul_bin=$2
deb=$PWD/dist/driftgate_${version}_amd64.deb
cache=${DRIFTGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/driftgate}
# The root's package list is part of its cache key: change it, get a new one.
pkgs=systemd,systemd-sysv,dbus,iproute2,procps,nftables,util-linux
root_cache=$cache/bookworm-root-$(echo "$pkgs" | sha256sum | cut -c1-12)
id=dgtsys$$
ns=$id
work=$(mktemp -d /tmp/driftgate-systemd.XXXXXX)
nspawn_pid=
leader=

fail() {
	echo "test-systemd: FAIL: $*" >&2
	dump
	if [ -n "${DRIFTGATE_SYSTEMD_HOLD:-}" ]; then # look around: nsenter -t LEADER -a
		echo "test-systemd: holding the container (leader $leader) for ${DRIFTGATE_SYSTEMD_HOLD}s" >&2
		sleep "$DRIFTGATE_SYSTEMD_HOLD"
	fi
	exit 1
}
step() { echo "== $*"; }

[ "$(id -u)" = 0 ] || { echo "test-systemd: needs root (debootstrap, systemd-nspawn, namespaces)" >&2; exit 1; }
[ -f "$deb" ] || { echo "test-systemd: $deb missing (make package)" >&2; exit 1; }
[ -x "$consul_bin" ] || { echo "test-systemd: $consul_bin is not an executable Consul" >&2; exit 1; }
for tool in debootstrap systemd-nspawn nsenter ip; do
	command -v $tool >/dev/null || { echo "test-systemd: $tool missing (apt-get install debootstrap systemd-container)" >&2; exit 1; }
done

cleanup() {
	set +e
	if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
		kill -TERM "$nspawn_pid"
		for _ in $(seq 100); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$nspawn_pid" 2>/dev/null
		wait "$nspawn_pid" 2>/dev/null
	fi
	ip netns del "$ns" 2>/dev/null
	ip netns del "$ns-peer" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT

# ct: run a command in the container (all its namespaces).
ct() { nsenter -t "$leader" -a -- "$@"; }
# ct_sh: a shell command in the container.
ct_sh() { ct /bin/sh -c "$1"; }
# wait_for SECONDS DESCRIPTION COMMAND...: until the command succeeds.
wait_for() {
	local secs=$1 what=$2
	shift 2
	local end=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -lt $end ] || fail "$what: not after ${secs}s"
		sleep 0.2
	done
}
dump() {
	[ -n "$leader" ] || return 0
	echo "--- journal of the container (last 80 lines)" >&2
	ct journalctl --no-pager -n 80 -o short-monotonic >&2 2>/dev/null || true
}
prop() { ct systemctl show -P "$2" "$1"; }
# grep_q: grep -q that reads its whole input (with pipefail, grep -q's early
# exit fails the command that writes to it).
grep_q() { grep "$@" >/dev/null; }

# The Debian mirror is the machine's own (never a host name in the tree).
mirror() {
	local m
	m=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1)
	[ -n "$m" ] || m=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -1)
	[ -n "$m" ] || fail "no Debian mirror in /etc/apt/sources.list{,.d}"
	echo "$m"
}

step "root file system: $root_cache"
if [ ! -d "$root_cache" ]; then
	rm -rf "$root_cache.tmp"
	mkdir -p "$cache"
	debootstrap --variant=minbase --include="$pkgs" bookworm "$root_cache.tmp" "$(mirror)" >"$work/debootstrap.log" 2>&1 ||
		{ tail -20 "$work/debootstrap.log" >&2; fail "debootstrap"; }
	mv "$root_cache.tmp" "$root_cache"
fi
cp -a "$root_cache" "$work/root"
cp "$deb" "$work/root/root/driftgate.deb"
cp "$consul_bin" "$work/root/usr/local/bin/consul"
# In /usr/lib, below /run: a runtime mask (Consul away, below) wins over it.
cat >"$work/root/usr/lib/systemd/system/consul.service" <<'EOF'
[Unit]
Description=Consul (dev mode, for the test)
[Service]
ExecStart=/usr/local/bin/consul agent -dev -node ct -bind 127.0.0.1 -client 127.0.0.1 -log-level warn
[Install]
WantedBy=multi-user.target
EOF
# No console login, no units that wait for a network we do not manage.
ln -sf /dev/null "$work/root/etc/systemd/system/console-getty.service"
echo ct >"$work/root/etc/hostname"

step "network namespace $ns: eth0 198.18.7.2/24, its peer 198.18.7.1"
ip netns add "$ns"
ip netns add "$ns-peer"
ip -n "$ns" link add eth0 type veth peer name eth0 netns "$ns-peer"
ip -n "$ns" link set lo up
ip -n "$ns" addr add 198.18.7.2/24 dev eth0
ip -n "$ns" link set eth0 up
ip -n "$ns" route add 224.0.0.0/4 dev eth0
ip -n "$ns-peer" addr add 198.18.7.1/24 dev eth0
ip -n "$ns-peer" link set eth0 up

step "boot (systemd-nspawn --boot)"
# CAP_NET_ADMIN: a host's root has it; nspawn keeps it only for a private
# network it makes itself, not one it joins.
systemd-nspawn --boot --register=no --keep-unit --quiet -D "$work/root" -M "$id" \
	--network-namespace-path="/run/netns/$ns" --capability=CAP_NET_ADMIN >"$work/console.log" 2>&1 &
nspawn_pid=$!
end=$((SECONDS + 60))
while [ -z "$leader" ]; do
	[ $SECONDS -lt $end ] || { cat "$work/console.log" >&2; fail "no container init after 60s"; }
	kill -0 "$nspawn_pid" 2>/dev/null || { cat "$work/console.log" >&2; fail "systemd-nspawn exited"; }
	leader=$(pgrep -P "$nspawn_pid" -x systemd || true)
	sleep 0.2
done
wait_for 60 "the container's systemd to finish booting" ct_sh 'case $(systemctl is-system-running) in running|degraded) exit 0;; esac; exit 1'
ct systemctl start consul.service

step "install the package"
ct dpkg -i /root/driftgate.deb >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg -i"; }
[ "$(prop driftgate.service UnitFileState)" = enabled ] || fail "driftgate.service is not enabled on installation"
[ "$(ct stat -c %a /var/lib/driftgate)" = 750 ] || fail "/var/lib/driftgate is not 0750 after installation"

step "first start with the shipped configuration: refused (no VIP), no restart loop, no address"
ct systemctl start driftgate.service 2>/dev/null && fail "the agent started with the shipped configuration (no VIP)"
wait_for 10 "driftgate.service to fail" ct_sh '[ "$(systemctl is-failed driftgate.service)" = failed ]'
[ "$(prop driftgate.service ExecMainStatus)" = 78 ] || fail "exit status $(prop driftgate.service ExecMainStatus), want 78 (a configuration error)"
sleep 3
[ "$(prop driftgate.service NRestarts)" = 0 ] || fail "a configuration error was restarted $(prop driftgate.service NRestarts) times"
ct journalctl -u driftgate.service --no-pager | grep_q "vips: none is set" || fail "the journal does not say the VIP is missing"
ct ip -4 addr show dev eth0 | grep_q 198.18.7.100 && fail "the VIP is on eth0 although none is configured"

step "configure: a VIP, two hooks (one the shipped example), a receiver"
ct cp /etc/driftgate/driftgate.yaml /root/shipped.yaml
ct_sh 'cat > /etc/driftgate/driftgate.yaml' <<'EOF'
node: ct
consul:
  address: 127.0.0.1:8500
vips:
  - address: 198.18.7.100/24
    interface: eth0
    announce:
      delay: 0s
relay:
  listen: ["198.18.7.100:5000"]
  group: 239.255.0.1:5001
  interface: eth0
receive:
  group: 239.255.0.1:5001
  interface: eth0
  deliver: udp://127.0.0.1:6000
egress:
  source: 198.18.7.100:5000
  allow: [198.18.7.1/32]
  listen:
    - address: unix:///run/driftgate/egress.sock
      header: true
      destination: 198.18.7.1:9000
hooks:
  - name: record
    command: ["/bin/sh", "-c", "echo \"$DRIFTGATE_PREVIOUS_ROLE -> $DRIFTGATE_ROLE\" >> /var/lib/driftgate/hooks.log"]
    timeout: 5s
EOF
# The shipped example hook, as the packaged file has it.
ct_sh 'grep -A3 "^  - name: notify" /root/shipped.yaml >> /etc/driftgate/driftgate.yaml && printf "log:\n  level: info\n" >> /etc/driftgate/driftgate.yaml'
ct driftgate config check /etc/driftgate/driftgate.yaml >/dev/null 2>&1 || fail "the test's configuration is invalid: $(ct driftgate config check /etc/driftgate/driftgate.yaml 2>&1 | tail -3)"
ct systemctl reset-failed driftgate.service

step "start: active, READY, primary, VIP on eth0"
ct systemctl start driftgate.service || fail "systemctl start driftgate"
[ "$(prop driftgate.service ActiveState)" = active ] || fail "driftgate.service is $(prop driftgate.service ActiveState)"
status_primary() { ct driftgate status 2>/dev/null | grep_q "role primary"; }
wait_for 20 "the agent to become primary" status_primary
vip_present() { ct ip -4 addr show dev eth0 | grep_q "inet 198.18.7.100/24"; }
wait_for 5 "the VIP on eth0" vip_present
ct systemctl show -P StatusText driftgate.service | grep_q primary || fail "the unit's status text does not say primary: $(prop driftgate.service StatusText)"

step "control socket: an operator in group driftgate needs no root; others are refused"
ct useradd --no-create-home --groups driftgate op
ct useradd --no-create-home outsider
ct runuser -u op -- driftgate status >"$work/status.out" 2>&1 || fail "driftgate status as a member of group driftgate: $(cat "$work/status.out")"
grep_q "role primary" "$work/status.out" || fail "status as an operator does not show this node primary: $(cat "$work/status.out")"
ct runuser -u outsider -- driftgate status >"$work/status.out" 2>&1 && fail "driftgate status worked for a user outside group driftgate"
grep_q -i "permission denied" "$work/status.out" || fail "status as an outsider failed for another reason: $(cat "$work/status.out")"
ct runuser -u outsider -- driftgate step-down >"$work/status.out" 2>&1 && fail "step-down worked for a user outside group driftgate"
vip_present || fail "the outsider's step-down cost the VIP"

step "egress: the unix socket in the unit's runtime directory, for group driftgate; the primary sends from the VIP"
[ "$(ct stat -c '%a %U %G' /run/driftgate/egress.sock)" = "660 driftgate driftgate" ] || fail "the egress socket is $(ct stat -c '%a %U %G' /run/driftgate/egress.sock), want 660 driftgate driftgate"
egress_sent() { ct driftgate status 2>/dev/null | grep_q "egress unix:///run/driftgate/egress.sock: received $1, held 0, sent=$1"; }
ct runuser -u op -- driftgate send --egress unix:///run/driftgate/egress.sock - "from op" >"$work/send.out" 2>&1 || fail "driftgate send as a member of group driftgate: $(cat "$work/send.out")"
wait_for 5 "the primary to send it from the VIP" egress_sent 1
ct runuser -u outsider -- driftgate send --egress unix:///run/driftgate/egress.sock - "from outsider" >"$work/send.out" 2>&1 && fail "driftgate send worked for a user outside group driftgate"
grep_q -i "permission denied" "$work/send.out" || fail "send as an outsider failed for another reason: $(cat "$work/send.out")"
egress_sent 1 || fail "the egress counts changed after the outsider's refused send: $(ct driftgate status 2>&1 | grep egress)"
ct runuser -u op -- driftgate step-down >"$work/status.out" 2>&1 || fail "step-down as an operator: $(cat "$work/status.out")"
vip_gone() { ! vip_present; }
wait_for 5 "the VIP to go after the step-down" vip_gone
wait_for 30 "primary again after the hold-off (no other node)" status_primary

step "reload: applies what it can, says what needs a restart; a bad file is refused; the VIP stays"
ct systemctl reload driftgate.service || fail "systemctl reload with an unchanged file failed"
ct cp /etc/driftgate/driftgate.yaml /root/good.yaml
ct_sh 'sed -i "s/level: info/level: debug/; s/timeout: 5s/timeout: 4s/" /etc/driftgate/driftgate.yaml && printf "election:\n  profile: fast\n" >> /etc/driftgate/driftgate.yaml'
ct systemctl reload driftgate.service || fail "systemctl reload with a changed, valid file failed"
reported() { ct journalctl -u driftgate.service --no-pager -o cat | grep "msg=\"reload: applied" | tail -1; }
reported | grep_q "applied: Hooks.*Log.Level" || fail "the reload did not report the hooks and the log level applied: $(reported)"
reported | grep_q "needs a restart.*Election" || fail "the reload did not report the election as needing a restart: $(reported)"
vip_present || fail "the reload cost the VIP"
# Back to the first file, but at debug level: the stop below shows it took.
ct_sh 'sed "s/level: info/level: debug/" /root/good.yaml > /etc/driftgate/driftgate.yaml'
ct systemctl reload driftgate.service || fail "systemctl reload back to the first file failed"
ct_sh 'echo "bogus: 1" >> /etc/driftgate/driftgate.yaml'
ct systemctl reload driftgate.service 2>/dev/null && fail "systemctl reload accepted an invalid file"
ct cp /root/good.yaml /etc/driftgate/driftgate.yaml
[ "$(prop driftgate.service ActiveState)" = active ] || fail "a failed reload stopped the agent"
vip_present || fail "a failed reload cost the VIP"
ct journalctl -p err -u driftgate.service --no-pager | grep_q "bogus" || fail "journalctl -p err does not show the refused reload"

step "journal priorities: journalctl -p warning shows warnings, not info"
ct journalctl -p warning -u driftgate.service --no-pager -o cat | grep_q "role change" && fail "info lines reach the journal as warnings"
ct journalctl -p info -u driftgate.service --no-pager -o cat | grep_q "role change" || fail "no role change in the journal"

step "stop: the VIP goes, ExecStopPost runs, the hook of the last transition runs"
ct systemctl stop driftgate.service
vip_present && fail "the VIP is still on eth0 after stop"
prop driftgate.service ExecStopPost | grep_q "code=exited ; status=0" || fail "ExecStopPost (driftgate cleanup) did not run cleanly: $(prop driftgate.service ExecStopPost)"
ct grep -q "primary -> fenced\|primary -> standby\|-> stopping" /var/lib/driftgate/hooks.log || fail "no hook ran for the stop: $(ct cat /var/lib/driftgate/hooks.log)"

ct journalctl -u driftgate.service --no-pager -o cat | grep_q 'level=DEBUG msg="hook ran"' || fail "no debug line after a reload to level debug"
ct journalctl -p warning -u driftgate.service --no-pager -o cat | grep_q "leaving leadership" && fail "a clean stop logged a warning: $(ct journalctl -p warning -u driftgate.service --no-pager -o cat | grep "leaving leadership")"
ct journalctl -t driftgate-hook --no-pager -o cat | grep_q "ct: primary -> " || fail "the shipped example hook logged nothing: $(ct journalctl -t driftgate-hook --no-pager -o cat)"

step "kill -9: restarted, cleaned up, primary again"
ct systemctl start driftgate.service
wait_for 20 "primary after start" status_primary
restarts=$(prop driftgate.service NRestarts)
ct systemctl kill -s KILL driftgate.service
wait_for 20 "a restart after kill -9" ct_sh "[ \"\$(systemctl show -P NRestarts driftgate.service)\" -gt $restarts ]"
wait_for 20 "primary after the restart" status_primary
ct journalctl -u driftgate.service --no-pager -o cat | grep_q "removed 198.18.7.100/24" || fail "ExecStopPost did not remove the VIP the killed agent left"
[ "$(ct stat -c %a /var/lib/driftgate)" = 750 ] || fail "/var/lib/driftgate is $(ct stat -c %a /var/lib/driftgate) after starts, want 750"

step "watchdog: a stopped process is killed and restarted"
restarts=$(prop driftgate.service NRestarts)
ct kill -STOP "$(prop driftgate.service MainPID)"
wait_for 30 "the watchdog to restart a stopped agent" ct_sh "[ \"\$(systemctl show -P NRestarts driftgate.service)\" -gt $restarts ]"
wait_for 20 "primary after the watchdog restart" status_primary
ct journalctl -u driftgate.service --no-pager -o cat | grep_q -i "watchdog" || fail "the journal does not mention the watchdog"

step "Consul away at start: READY at once, the status says why, primary once Consul is back"
# Masked: the unit's Wants= would start it again with the agent.
ct systemctl stop consul.service
ct systemctl mask --runtime --quiet consul.service
t0=$SECONDS
timeout 20 nsenter -t "$leader" -a -- systemctl restart driftgate.service || fail "systemctl restart with Consul away did not return within 20 s"
[ $((SECONDS - t0)) -le 15 ] || fail "systemctl restart with Consul away took $((SECONDS - t0)) s"
[ "$(prop driftgate.service ActiveState)" = active ] || fail "driftgate.service is $(prop driftgate.service ActiveState) with Consul away"
waiting() { prop driftgate.service StatusText | grep_q "waiting for Consul"; }
wait_for 10 "the status text to say it waits for Consul" waiting
vip_present && fail "the VIP is on eth0 with Consul away"
ct journalctl -p warning -u driftgate.service --no-pager -o cat | grep_q "registering with Consul failed" || fail "journalctl -p warning does not show the warning that Consul is away"
ct systemctl unmask --runtime --quiet consul.service
ct systemctl start consul.service
wait_for 40 "primary once Consul is back" status_primary

step "driftgate-receive@ with --iface runs"
ct_sh 'echo "DRIFTGATE_RECEIVE_ARGS=\"--group 239.255.0.1:5001 --iface eth0 --deliver udp://127.0.0.1:6001\"" > /etc/driftgate/receive-t.env'
ct systemctl start driftgate-receive@t.service || fail "driftgate-receive@t did not start"
sleep 3
[ "$(prop driftgate-receive@t.service ActiveState)" = active ] && [ "$(prop driftgate-receive@t.service NRestarts)" = 0 ] ||
	fail "driftgate-receive@t is $(prop driftgate-receive@t.service ActiveState) after $(prop driftgate-receive@t.service NRestarts) restarts"

step "systemd-analyze security (must not get worse)"
for unit in driftgate.service:2.1 driftgate-receive@t.service:1.5; do
	name=${unit%:*} limit=${unit#*:}
	score=$(ct systemd-analyze security "$name" 2>/dev/null | awk '/Overall exposure level/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\.[0-9]+$/) print $i }')
	echo "$name: $score (at most $limit)"
	awk -v s="$score" -v l="$limit" 'BEGIN { exit !(s != "" && s <= l) }' || fail "$name exposure $score is worse than $limit"
done

step "remove: every driftgate process stops, the state directory stays"
ct dpkg --remove driftgate >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg --remove"; }
sleep 1
ct pgrep -f /usr/bin/driftgate >/dev/null && fail "driftgate processes still run after remove: $(ct pgrep -af /usr/bin/driftgate)"
vip_present && fail "the VIP is still on eth0 after remove"
ct test -d /var/lib/driftgate || fail "remove deleted /var/lib/driftgate"

step "purge"
ct dpkg --purge driftgate >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg --purge"; }
ct test -e /var/lib/driftgate && fail "/var/lib/driftgate is still there after purge"
ct test -e /etc/driftgate/driftgate.yaml && fail "the configuration is still there after purge"
echo "test-systemd: ok ($deb)"
