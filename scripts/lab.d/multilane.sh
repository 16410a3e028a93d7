# shellcheck shell=bash
# Multilane VM lab — shared setup for the scenarios that run the real array-server on the
# guest's virtio disks and attach its partitions with ublk-host. Copied into the guest as
# /lab/multilane.sh; a scenario sources it after lib.sh:   . /lab/multilane.sh
#
#   ml_format                      array over /dev/vda /dev/vdb /dev/vdc (chunk 64K, --force),
#                                  admin token in $ML_TOKEN
#   ml_partition NAME SIZE         offline: create a partition
#   ml_host NAME                   offline: create a host, secret in $LAB_WORK/NAME.key
#   ml_assign HOST PART [--read-only]
#   ml_serve PORT ADMIN_PORT       start `array-server serve --admin` (background "server"),
#                                  wait until its admin API answers, and assert that its
#                                  member disks are the guest's virtio disks
#   ml_serve_netns PORT ADMIN_PORT like ml_serve, but the server runs in its own network
#                                  namespace ($ML_NETNS) behind a veth pair ($ML_VETH_HOST in
#                                  ours, $ML_VETH_SERVER in its), so the path can be cut
#   ml_cut / ml_heal               drop every packet on both ends of that veth pair (netem
#                                  loss 100%: no RST, no error, silence) / stop dropping
#   ml_serve_paths PORT ADMIN_PORT like ml_serve_netns with two veth pairs, two subnets
#                                  (path 0: 10.77.0.0/24, path 1: 10.78.0.0/24), the server
#                                  listening on both (${ML_ADDRS[@]}); ml_ctl runs in its netns
#   ml_cut_path N / ml_heal_path N cut / heal path N only (as ml_cut / ml_heal)
#   ml_path_bytes HOST PART N      bytes read + written by the live data lanes of HOST on PART
#                                  that came in over path N (their peer is on its subnet)
#   ml_path_lanes HOST PART N      how many of those lanes there are
#   ml_serve_own NAME DISK PORT ADMIN_PORT
#                                  one more server: DISK alone formatted as its own array with
#                                  partition vol-NAME (32M) for host h-NAME (secret
#                                  $LAB_WORK/h-NAME.key, token $LAB_WORK/NAME.token), served
#                                  on 127.0.0.1:PORT as bg "server-NAME"
#   ml_use_server NAME PORT ADMIN_PORT
#                                  aim ml_ctl, ml_attach (and the ml_* queries) at that server
#   ml_ctl ARGS...                 array-server ctl against that server (`ml_ctl --json sessions`)
#   ml_attach NAME HOST PART ARGS...
#                                  background `ublk-host attach` (bg name NAME, log
#                                  $LAB_WORK/NAME.log), wait for its ready line; sets ML_DEV
#                                  (/dev/ublkbN) and ML_ID (N) and registers a detach at cleanup
#   ml_detach NAME DEV             ublk-host detach; wait for DEV to go and the daemon to exit
#   ml_lanes HOST PART             the server's data lanes of HOST on PART, one "queue:lane" a
#                                  line, sorted
#   ml_lane_count HOST PART        `ctl sessions --host --partition --count`
#   ml_wait_lanes HOST PART N      wait until the server reports N data lanes there
#   ml_lane_counters HOST PART     "queue:lane id reads bytes_read writes bytes_written" a line
#   ml_wcache_members              make the members nbd devices (/dev/nbd0..2) served by nbdkit's
#                                  cache filter in writeback mode over /dev/vda..vdc (bg
#                                  "nbdkit0..2"): a volatile write cache in guest RAM, written
#                                  to the disks only on a flush
#   ml_wcache_crash                kill -9 every nbdkit (its cache is lost: the disks' "power
#                                  loss"), disconnect the nbd devices, start nbdkit again on the
#                                  same disks and reconnect them
#   ml_flushes HOST PART           the server's FLUSH requests from HOST on PART (/metrics)
#
# Every wait has a deadline (wait_for); nothing sleeps to synchronise.

ML_DISK_PATHS=(/dev/vda /dev/vdb /dev/vdc)
ML_DISKS=()
for _d in "${ML_DISK_PATHS[@]}"; do ML_DISKS+=(--disk "$_d"); done
unset _d
ML_TOKEN=$LAB_WORK/admin.token
ML_ADDR=
ML_ADMIN=

ml_format() {
	need_dev /dev/ublk-control "${ML_DISK_PATHS[@]}"
	need_bin array-server ublk-host jq
	array-server format "${ML_DISKS[@]}" --chunk 64K --force --admin-token-file "$ML_TOKEN" >/dev/null
}

ml_partition() { array-server partition create "${ML_DISKS[@]}" "$@" >/dev/null; }

ml_host() { array-server host create "${ML_DISKS[@]}" --secret-file "$LAB_WORK/$1.key" "$1" >/dev/null; }

ml_assign() {
	local host=$1 part=$2
	shift 2
	array-server assign "${ML_DISKS[@]}" "$@" "$host" "$part" >/dev/null
}

ML_CTL_NETNS=
ml_ctl() {
	if [ -n "$ML_CTL_NETNS" ]; then
		ip netns exec "$ML_CTL_NETNS" array-server ctl --admin "http://$ML_ADMIN" --token-file "$ML_TOKEN" "$@"
	else
		array-server ctl --admin "http://$ML_ADMIN" --token-file "$ML_TOKEN" "$@"
	fi
}

ml_serve() {
	ML_ADDR=127.0.0.1:$1
	ML_ADMIN=127.0.0.1:$2
	bg_start server array-server serve "${ML_DISKS[@]}" --listen "$ML_ADDR" --threads 2 \
		--admin "$ML_ADMIN" --admin-token-file "$ML_TOKEN"
	wait_for "ml_ctl --json array" 30 "array-server's admin API on $ML_ADMIN"
	ml_assert_virtio_members
}

ML_NETNS=mlsrv
ML_VETH_HOST=mlh0
ML_VETH_SERVER=mls0
ML_NET_HOST=10.77.0.1
ML_NET_SERVER=10.77.0.2

ml_serve_netns() {
	ip netns add "$ML_NETNS"
	on_cleanup "ip netns del $ML_NETNS"
	ip link add "$ML_VETH_HOST" type veth peer name "$ML_VETH_SERVER"
	ip link set "$ML_VETH_SERVER" netns "$ML_NETNS"
	ip addr add "$ML_NET_HOST/24" dev "$ML_VETH_HOST"
	ip link set "$ML_VETH_HOST" up
	ip -n "$ML_NETNS" addr add "$ML_NET_SERVER/24" dev "$ML_VETH_SERVER"
	ip -n "$ML_NETNS" link set "$ML_VETH_SERVER" up
	ip -n "$ML_NETNS" link set lo up
	ML_ADDR=$ML_NET_SERVER:$1
	ML_ADMIN=$ML_NET_SERVER:$2
	bg_start server ip netns exec "$ML_NETNS" array-server serve "${ML_DISKS[@]}" --listen "$ML_ADDR" \
		--threads 2 --admin "$ML_ADMIN" --admin-token-file "$ML_TOKEN"
	wait_for "ml_ctl --json array" 30 "array-server's admin API on $ML_ADMIN (netns $ML_NETNS)"
	ml_assert_virtio_members
}

ml_cut() {
	tc qdisc add dev "$ML_VETH_HOST" root netem loss 100%
	ip netns exec "$ML_NETNS" tc qdisc add dev "$ML_VETH_SERVER" root netem loss 100%
}

ml_heal() {
	tc qdisc del dev "$ML_VETH_HOST" root
	ip netns exec "$ML_NETNS" tc qdisc del dev "$ML_VETH_SERVER" root
}

ML_ADDRS=()
# Host side, server side of path N's veth pair, and its subnet prefix.
ml_path_net() { echo "mlh$1 mls$1 10.$((77 + $1)).0"; }

ml_serve_paths() {
	local port=$1 admin=$2 n veth_host veth_server net listen=()
	ip netns add "$ML_NETNS"
	on_cleanup "ip netns del $ML_NETNS"
	ip -n "$ML_NETNS" link set lo up
	for n in 0 1; do
		read -r veth_host veth_server net <<<"$(ml_path_net "$n")"
		ip link add "$veth_host" type veth peer name "$veth_server"
		ip link set "$veth_server" netns "$ML_NETNS"
		ip addr add "$net.1/24" dev "$veth_host"
		ip link set "$veth_host" up
		ip -n "$ML_NETNS" addr add "$net.2/24" dev "$veth_server"
		ip -n "$ML_NETNS" link set "$veth_server" up
		ML_ADDRS+=("$net.2:$port")
		listen+=(--listen "$net.2:$port")
	done
	ML_ADDR=${ML_ADDRS[0]}
	ML_ADMIN=127.0.0.1:$admin
	ML_CTL_NETNS=$ML_NETNS
	bg_start server ip netns exec "$ML_NETNS" array-server serve "${ML_DISKS[@]}" "${listen[@]}" \
		--threads 2 --admin "$ML_ADMIN" --admin-token-file "$ML_TOKEN"
	wait_for "ml_ctl --json array" 30 "array-server's admin API on $ML_ADMIN (netns $ML_NETNS)"
	ml_assert_virtio_members
}

ml_cut_path() {
	local veth_host veth_server net
	read -r veth_host veth_server net <<<"$(ml_path_net "$1")"
	tc qdisc add dev "$veth_host" root netem loss 100%
	ip netns exec "$ML_NETNS" tc qdisc add dev "$veth_server" root netem loss 100%
}

ml_heal_path() {
	local veth_host veth_server net
	read -r veth_host veth_server net <<<"$(ml_path_net "$1")"
	tc qdisc del dev "$veth_host" root
	ip netns exec "$ML_NETNS" tc qdisc del dev "$veth_server" root
}

ml_path_sessions() { # HOST PART N
	local veth_host veth_server net
	read -r veth_host veth_server net <<<"$(ml_path_net "$3")"
	ml_sessions_of "$1" "$2" | jq -c --arg net "$net." 'select(.peer | startswith($net))'
}
ml_path_bytes() { ml_path_sessions "$@" | jq -s 'map(.bytes_read + .bytes_written) | add // 0'; }
ml_path_lanes() { ml_path_sessions "$@" | jq -s 'length'; }

ml_serve_own() {
	local name=$1 disk=$2 port=$3 admin=$4
	local token=$LAB_WORK/$name.token
	array-server format --disk "$disk" --chunk 64K --force --admin-token-file "$token" >/dev/null
	array-server partition create --disk "$disk" "vol-$name" 32M >/dev/null
	array-server host create --disk "$disk" --secret-file "$LAB_WORK/h-$name.key" "h-$name" >/dev/null
	array-server assign --disk "$disk" "h-$name" "vol-$name" >/dev/null
	ml_start_own "$name" "$disk" "$port" "$admin"
}

# ml_start_own NAME DISK PORT ADMIN_PORT: (re)start the server ml_serve_own made.
ml_start_own() {
	local name=$1 disk=$2 port=$3 admin=$4
	local token=$LAB_WORK/$name.token
	bg_start "server-$name" array-server serve --disk "$disk" --listen "127.0.0.1:$port" \
		--threads 1 --admin "127.0.0.1:$admin" --admin-token-file "$token"
	wait_for "array-server ctl --admin http://127.0.0.1:$admin --token-file $token --json array" 30 \
		"array-server $name's admin API"
}

ml_use_server() { ML_ADDR=127.0.0.1:$2 ML_ADMIN=127.0.0.1:$3 ML_TOKEN=$LAB_WORK/$1.token; }

# Sum of bytes the server wrote for HOST on PART over its live data lanes.
ml_bytes_written() { ml_sessions_of "$1" "$2" | jq -s 'map(.bytes_written) | add // 0'; }

# The server's member disks are exactly the guest's virtio disks, opened as block devices.
ml_assert_virtio_members() {
	local got want
	got=$(ml_ctl --json array | jq -r '.disks | sort_by(.index)[] | "\(.path) \(.block_device)"' | tr '\n' ' ')
	want=$(printf '%s true ' "${ML_DISK_PATHS[@]}")
	assert_eq "$got" "$want" "array members (path block_device) reported by the server"
	local d
	for d in "${ML_DISK_PATHS[@]}"; do
		[ -b "$d" ] || fail "$d is not a block device"
		[ "$(readlink -f "/sys/class/block/${d#/dev/}/device/driver")" = /sys/bus/virtio/drivers/virtio_blk ] ||
			fail "$d is not driven by virtio_blk"
	done
}

ml_attach() {
	local name=$1 host=$2 part=$3
	shift 3
	bg_start "$name" ublk-host attach --server "$ML_ADDR" --host "$host" \
		--secret-file "$LAB_WORK/$host.key" --partition "$part" "$@"
	wait_for "grep -q ' ready ' $LAB_WORK/$name.log || ! bg_alive $name" 60 "ublk-host attach $part to report ready"
	grep -q ' ready ' "$LAB_WORK/$name.log" || fail "ublk-host attach $part exited: $(tail -n 3 "$LAB_WORK/$name.log")"
	ML_DEV=$(grep -o '/dev/ublkb[0-9]*' "$LAB_WORK/$name.log" | head -n1)
	ML_ID=${ML_DEV#/dev/ublkb}
	[ -n "$ML_ID" ] || fail "no device path in the ready line of $name"
	on_cleanup "[ ! -e /sys/class/ublk-char/ublkc$ML_ID ] || ublk-host detach $ML_ID"
	wait_for "$ML_DEV" 30
	log "$(grep ' ready ' "$LAB_WORK/$name.log")"
}

ml_detach() {
	local name=$1 dev=$2
	ublk-host detach "$dev"
	wait_for "[ ! -e $dev ]" 30 "$dev to go away after detach"
	wait_for "! bg_alive $name" 30 "ublk-host attach ($name) to exit after detach"
}

ml_sessions_of() { # HOST PART: the data sessions as JSON objects, one a line
	ml_ctl --json sessions | jq -c --arg h "$1" --arg p "$2" \
		'.sessions[] | select(.kind == "data" and .host == $h and .partition == $p)'
}

ml_lanes() { ml_sessions_of "$1" "$2" | jq -r '"\(.queue):\(.lane)"' | sort; }

ml_lane_count() { ml_ctl sessions --host "$1" --partition "$2" --count; }

ml_wait_lanes() {
	local end got
	end=$(($(now_ms) + 30000))
	while got=$(ml_lane_count "$1" "$2") && [ "$got" != "$3" ]; do
		[ "$(now_ms)" -lt "$end" ] || fail "the server reports $got data lanes of $1 on $2 after 30 s, expected $3"
		sleep 0.1
	done
	[ "$got" = "$3" ] || fail "ctl sessions --count failed"
}

ML_WCACHE_PORT=10800
ml_wcache_start() { # I: nbdkit (cache filter, writeback) on the I-th virtio disk, as /dev/nbdI
	local i=$1 port=$((ML_WCACHE_PORT + $1)) vds=(/dev/vda /dev/vdb /dev/vdc)
	bg_start "nbdkit$i" nbdkit -f -i 127.0.0.1 -p "$port" --filter=cache file "${vds[$i]}" cache=writeback
	wait_for "ss -ltn | grep -q :$port" 30 "nbdkit on ${vds[$i]}"
	nbd-client -N '' 127.0.0.1 "$port" "/dev/nbd$i" -b 512 >/dev/null
}

ml_wcache_members() {
	local i
	need_bin nbdkit nbd-client
	ML_DISK_PATHS=() ML_DISKS=()
	for i in 0 1 2; do
		ml_wcache_start "$i"
		on_cleanup "nbd-client -d /dev/nbd$i >/dev/null 2>&1 || true"
		ML_DISK_PATHS+=("/dev/nbd$i")
		ML_DISKS+=(--disk "/dev/nbd$i")
	done
}

ml_wcache_crash() {
	local i
	for i in 0 1 2; do bg_stop "nbdkit$i" KILL || true; done
	for i in 0 1 2; do nbd-client -d "/dev/nbd$i" >/dev/null 2>&1 || true; done
	for i in 0 1 2; do ml_wcache_start "$i"; done
}

ml_flushes() {
	wget -q -O - --header "Authorization: Bearer $(cat "$ML_TOKEN")" "http://$ML_ADMIN/metrics" |
		awk -v want="multilane_requests_total{host=\"$1\",partition=\"$2\",op=\"flush\"}" \
			'$1 == want {n = $2} END {print n + 0}'
}

ml_lane_counters() {
	ml_sessions_of "$1" "$2" | jq -r '"\(.queue):\(.lane) \(.id) \(.reads) \(.bytes_read) \(.writes) \(.bytes_written)"' | sort
}
