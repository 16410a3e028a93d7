# shellcheck shell=bash
# Multilane VM lab — shared setup for the benchmark scenarios (compare-nbd, profile-depth,
# attach-ab, qd1-placement, ublk-lat): everything in guest RAM, never the virtio disks,
# whose emulation under TCG would be what gets measured. Copied into the guest as
# /lab/bench.sh; a scenario sources it after lib.sh:   . /lab/bench.sh
#
#   bench_array NAME MEMBER_SIZE PARTITION:SIZE...
#       an array on 3 tmpfs files of MEMBER_SIZE in /dev/shm/NAME (removed first, and at
#       cleanup: tmpfs pages are guest RAM), host "bench" (secret $BENCH_KEY, one per NAME)
#       assigned every PARTITION, served by `$BENCH_SERVER serve --threads $(nproc)` (bg
#       $BENCH_SERVER_TAG; defaults array-server and "server") on 127.0.0.1:$BENCH_PORT
#       (default 7700) until it answers discovery; $BENCH_CONN holds ublk-host's options
#       for it. Set those three before a second call for a second server beside the first.
#   bench_attach TAG PARTITION ARGS...
#       background `$BENCH_HOST attach $BENCH_CONN --partition PARTITION ARGS` (default
#       ublk-host; bg TAG, log $LAB_WORK/TAG.log), waits for its ready line, sets BENCH_DEV
#       to the device path, and registers its detach at cleanup
#   bench_nbd_peer SIZE CONNECTIONS
#       nbdkit's memory plugin of SIZE (e.g. 64M, bg "nbdkit") on 127.0.0.1:10809 and kernel
#       NBD on /dev/nbd0 with CONNECTIONS connections and 512-byte blocks; waits until
#       /dev/nbd0 has its size, registers the disconnect at cleanup
#
# Every wait has a deadline (wait_for).

BENCH_SERVER=array-server
BENCH_SERVER_TAG=server
BENCH_HOST=ublk-host
BENCH_PORT=7700
BENCH_NBD_PORT=10809

bench_array() {
	local store=/dev/shm/$1 size=$2
	BENCH_KEY=$LAB_WORK/$1.key
	BENCH_CONN=(--server "127.0.0.1:$BENCH_PORT" --host bench --secret-file "$BENCH_KEY")
	shift 2
	rm -rf "$store" # a --batch boot may have run another benchmark before
	mkdir -p "$store"
	on_cleanup "rm -rf $store"
	local disks=(--disk "$store/d0" --disk "$store/d1" --disk "$store/d2") spec
	{
		"$BENCH_SERVER" format "${disks[@]}" --size "$size" --chunk 64K \
			--admin-token-file "$LAB_WORK/bench.token"
		"$BENCH_SERVER" host create bench --secret-file "$BENCH_KEY" "${disks[@]}"
		for spec in "$@"; do
			"$BENCH_SERVER" partition create "${spec%%:*}" "${spec#*:}" "${disks[@]}"
			"$BENCH_SERVER" assign bench "${spec%%:*}" "${disks[@]}"
		done
	} >/dev/null 2>&1 || fail "setting up the tmpfs array"
	bg_start "$BENCH_SERVER_TAG" "$BENCH_SERVER" serve "${disks[@]}" --listen "127.0.0.1:$BENCH_PORT" \
		--threads "$(nproc)" --no-admin
	wait_for "ublk-host discover ${BENCH_CONN[*]} >/dev/null 2>&1" 30 "array-server"
}

bench_attach() {
	local tag=$1 partition=$2
	shift 2
	bg_start "$tag" "$BENCH_HOST" attach "${BENCH_CONN[@]}" --partition "$partition" "$@"
	wait_for "grep -q ' ready ' $LAB_WORK/$tag.log" 60 "device $tag"
	BENCH_DEV=$(grep -o '/dev/ublkb[0-9]*' "$LAB_WORK/$tag.log" | head -n1)
	on_cleanup "$BENCH_HOST detach ${BENCH_DEV#/dev/ublkb} 2>/dev/null || true"
}

bench_nbd_peer() {
	bg_start nbdkit nbdkit -f -i 127.0.0.1 -p "$BENCH_NBD_PORT" memory "$1"
	wait_for "ss -ltn | grep -q :$BENCH_NBD_PORT" 30 "nbdkit"
	nbd-client -N '' 127.0.0.1 "$BENCH_NBD_PORT" /dev/nbd0 -C "$2" -b 512 >/dev/null
	on_cleanup "nbd-client -d /dev/nbd0 >/dev/null 2>&1 || true"
	wait_for "[ \$(blockdev --getsize64 /dev/nbd0) -gt 0 ]" 30 "/dev/nbd0 to get its size"
}
