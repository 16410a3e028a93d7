# shellcheck shell=bash
# Multilane VM lab — shared setup for the benchmark scenarios (compare-nbd, profile-depth,
# attach-ab, qd1-placement, ublk-lat): everything in guest RAM, never the virtio disks,
# whose emulation under TCG would be what gets measured. Copied into the guest as
# /lab/bench.sh; a scenario sources it after lib.sh:   . /lab/bench.sh
#
#   bench_array NAME MEMBER_SIZE PARTITION:SIZE...
#       an array on 3 tmpfs files of MEMBER_SIZE in /dev/shm/NAME (removed first, and at
#       cleanup: tmpfs pages are guest RAM), host "bench" (secret $BENCH_KEY) assigned every
#       PARTITION, served by `array-server serve --threads $(nproc)` (bg "server") on
#       127.0.0.1:7700 until it answers discovery; $BENCH_CONN holds ublk-host's options
#       for it
#   bench_attach TAG PARTITION ARGS...
#       background `ublk-host attach $BENCH_CONN --partition PARTITION ARGS` (bg TAG, log
#       $LAB_WORK/TAG.log), waits for its ready line, sets BENCH_DEV to the device path, and
#       registers its detach at cleanup
#   bench_nbd_peer SIZE CONNECTIONS
#       nbdkit's memory plugin of SIZE (e.g. 64M, bg "nbdkit") on 127.0.0.1:10809 and kernel
#       NBD on /dev/nbd0 with CONNECTIONS connections and 512-byte blocks; waits until
#       /dev/nbd0 has its size, registers the disconnect at cleanup
#
# Every wait has a deadline (wait_for).

BENCH_PORT=7700
BENCH_NBD_PORT=10809
BENCH_KEY=$LAB_WORK/bench.key
BENCH_CONN=(--server "127.0.0.1:$BENCH_PORT" --host bench --secret-file "$BENCH_KEY")

bench_array() {
	local store=/dev/shm/$1 size=$2
	shift 2
	rm -rf "$store" # a --batch boot may have run another benchmark before
	mkdir -p "$store"
	on_cleanup "rm -rf $store"
	local disks=(--disk "$store/d0" --disk "$store/d1" --disk "$store/d2") spec
	{
		array-server format "${disks[@]}" --size "$size" --chunk 64K \
			--admin-token-file "$LAB_WORK/bench.token"
		array-server host create bench --secret-file "$BENCH_KEY" "${disks[@]}"
		for spec in "$@"; do
			array-server partition create "${spec%%:*}" "${spec#*:}" "${disks[@]}"
			array-server assign bench "${spec%%:*}" "${disks[@]}"
		done
	} >/dev/null 2>&1 || fail "setting up the tmpfs array"
	bg_start server array-server serve "${disks[@]}" --listen "127.0.0.1:$BENCH_PORT" \
		--threads "$(nproc)" --no-admin
	wait_for "ublk-host discover ${BENCH_CONN[*]} >/dev/null 2>&1" 30 "array-server"
}

bench_attach() {
	local tag=$1 partition=$2
	shift 2
	bg_start "$tag" ublk-host attach "${BENCH_CONN[@]}" --partition "$partition" "$@"
	wait_for "grep -q ' ready ' $LAB_WORK/$tag.log" 60 "device $tag"
	BENCH_DEV=$(grep -o '/dev/ublkb[0-9]*' "$LAB_WORK/$tag.log" | head -n1)
	on_cleanup "ublk-host detach ${BENCH_DEV#/dev/ublkb} 2>/dev/null || true"
}

bench_nbd_peer() {
	bg_start nbdkit nbdkit -f -i 127.0.0.1 -p "$BENCH_NBD_PORT" memory "$1"
	wait_for "ss -ltn | grep -q :$BENCH_NBD_PORT" 30 "nbdkit"
	nbd-client -N '' 127.0.0.1 "$BENCH_NBD_PORT" /dev/nbd0 -C "$2" -b 512 >/dev/null
	on_cleanup "nbd-client -d /dev/nbd0 >/dev/null 2>&1 || true"
	wait_for "[ \$(blockdev --getsize64 /dev/nbd0) -gt 0 ]" 30 "/dev/nbd0 to get its size"
}
