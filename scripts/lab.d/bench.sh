# shellcheck shell=bash
# Multilane VM lab — shared setup for the benchmark scenarios (compare-nbd, profile-depth, binary-ab,
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
#   bench_ab TITLE DEV_A DEV_B "NAME RW BS DEPTH"...
#       each job in $ROUNDS rounds of $RUNTIME s (fio io_uring direct, ${JOBS:-$Q} jobs), turn by turn
#       on /dev/nbd0, DEV_A and DEV_B, so that the drift of a TCG guest hits all three
#       alike; logs every round, reports metrics b_over_a_NAME and b_over_nbd_NAME and
#       prints a table of the medians (IOPS) under TITLE
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

# ab_figure DEV RW BS DEPTH -> IOPS, reads and writes summed
ab_figure() {
	fio_iops --name=ab --filename="$1" --rw="$2" --bs="$3" --direct=1 --ioengine=io_uring \
		--iodepth="$4" --numjobs="${JOBS:-$Q}" --runtime="$RUNTIME" --time_based --size=32M |
		awk '{ printf "%.0f", $1 + $2 }'
}

ab_ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

bench_ab() {
	local title=$1 dev_a=$2 dev_b=$3 job name rw bs depth round mn ma mb
	shift 3
	local table
	table=$(printf '%-16s %8s %8s %8s %7s %7s %7s' job nbd A B B/A A/nbd B/nbd)
	for job in "$@"; do
		read -r name rw bs depth <<<"$job"
		local nbd=() a=() b=()
		for ((round = 1; round <= ROUNDS; round++)); do
			nbd+=("$(ab_figure /dev/nbd0 "$rw" "$bs" "$depth")")
			a+=("$(ab_figure "$dev_a" "$rw" "$bs" "$depth")")
			b+=("$(ab_figure "$dev_b" "$rw" "$bs" "$depth")")
			log "$name round $round: nbd ${nbd[-1]}  A ${a[-1]}  B ${b[-1]} IOPS"
		done
		mn=$(median "${nbd[@]}") ma=$(median "${a[@]}") mb=$(median "${b[@]}")
		table+=$'\n'$(printf '%-16s %8s %8s %8s %6sx %6sx %6sx' "$name" "$mn" "$ma" "$mb" \
			"$(ab_ratio "$mb" "$ma")" "$(ab_ratio "$ma" "$mn")" "$(ab_ratio "$mb" "$mn")")
		metric "b_over_a_${name//-/_}" "$(ab_ratio "$mb" "$ma")" x
		metric "b_over_nbd_${name//-/_}" "$(ab_ratio "$mb" "$mn")" x
	done
	printf '\n======== %s (medians of %s alternating rounds of %ss, IOPS) ========\n%s\n' \
		"$title" "$ROUNDS" "$RUNTIME" "$table"
}
