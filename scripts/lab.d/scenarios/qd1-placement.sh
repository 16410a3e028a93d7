# shellcheck shell=bash
# lab-desc: 4k random reads at QD1 and QD32 and 1 MiB reads at QD8 (2 jobs) on kernel NBD and on two of our devices in one guest: array-server with pinned, CPU-steered threads (the default, which lets them go for large requests) and with --no-pin-threads; medians of alternating rounds
# lab-optional: benchmark of the CPU placement (array-server/src/net/placement.rs): scripts/lab qd1-placement
# An older server measured in the same boot (a third, pinned device): copy its binary to a
# file named array-server-before and pass it with room for a third array in the guest:
# `LAB_MEM=2G LAB_EXTRA_BINS=/path/array-server-before scripts/lab qd1-placement`.
# lab-smp: 2
# lab-timeout: 900
need_dev /dev/ublk-control /dev/nbd0
need_bin array-server ublk-host nbdkit nbd-client fio jq

ROUNDS=${QD1_ROUNDS:-3}
FIO_JOBS=${QD1_JOBS:-2} # LAB_GUEST_ENV=QD1_JOBS=1 measures a single stream
RUNTIME=${QD1_RUNTIME:-3}
KEY=$LAB_WORK/host.key

# start_device NAME PORT [serve args...] -> prints the device path (last line); the server
# binary is $SERVER_BIN (default array-server)
start_device() {
	local name=$1 port=$2 server=${SERVER_BIN:-array-server}
	shift 2
	local store=/dev/shm/$name
	rm -rf "$store" && mkdir -p "$store"
	# tmpfs pages are guest RAM: leave none behind for the next scenario of a --batch boot
	on_cleanup "rm -rf $store"
	local disks=(--disk "$store/d0" --disk "$store/d1" --disk "$store/d2")
	{
		"$server" format "${disks[@]}" --size 32M --chunk 64K --admin-token-file "$LAB_WORK/token-$name"
		"$server" host create bench --secret-file "$KEY-$name" "${disks[@]}"
		"$server" partition create vol 64M "${disks[@]}"
		"$server" assign bench vol "${disks[@]}"
	} >/dev/null 2>&1 || fail "setting up the $name array"
	bg_start "server-$name" "$server" serve "${disks[@]}" --listen "127.0.0.1:$port" --threads 2 --no-admin "$@"
	local conn=(--server "127.0.0.1:$port" --host bench --secret-file "$KEY-$name")
	wait_for "ublk-host discover ${conn[*]} >/dev/null 2>&1" 30 "the $name array-server"
	bg_start "host-$name" ublk-host attach "${conn[@]}" --partition vol --queues 2 --lanes-per-queue 1
	wait_for "grep -q ' ready ' $LAB_WORK/host-$name.log" 60 "the $name device"
	local dev
	dev=$(grep -o '/dev/ublkb[0-9]*' "$LAB_WORK/host-$name.log" | head -n1)
	on_cleanup "ublk-host detach ${dev#/dev/ublkb} 2>/dev/null || true"
	echo "$dev"
}

pinned=$(start_device pinned 7700 | tail -n1)
free=$(start_device free 7701 --no-pin-threads | tail -n1)
before=
if command -v array-server-before >/dev/null; then
	before=$(SERVER_BIN=array-server-before start_device before 7702 | tail -n1)
fi
grep -q 'pinned to CPUs' "$LAB_WORK/server-pinned.log" || fail "the default server did not pin its threads"
grep -q 'pinned to CPUs' "$LAB_WORK/server-free.log" && fail "--no-pin-threads still pinned"

# shellcheck source=../bench.sh
. /lab/bench.sh
bench_nbd_peer 64M 2

# figure DEV BS DEPTH RW -> IOPS ($FIO_JOBS jobs)
figure() {
	fio --output-format=json --name=cmp --filename="$1" --rw="$4" --bs="$2" --direct=1 \
		--ioengine=io_uring --iodepth="$3" --numjobs="$FIO_JOBS" --group_reporting --runtime="$RUNTIME" \
		--time_based --size=32M | jq -r '.jobs[0].read.iops | floor'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# name bs depth rw
JOBS=("qd1 4k 1 randread" "qd32 4k 32 randread" "1m_qd8 1M 8 read")
for job in "${JOBS[@]}"; do
	read -r name bs depth rw <<<"$job"
	declare -A runs=([nbd]="" [pinned]="" [free]="" [before]="")
	for ((round = 1; round <= ROUNDS; round++)); do
		nbd=$(figure /dev/nbd0 "$bs" "$depth" "$rw") p=$(figure "$pinned" "$bs" "$depth" "$rw")
		f=$(figure "$free" "$bs" "$depth" "$rw")
		b=${before:+$(figure "$before" "$bs" "$depth" "$rw")}
		log "$name round $round: nbd $nbd  pinned $p  unpinned $f${before:+  before $b} IOPS"
		runs[nbd]+=" $nbd" runs[pinned]+=" $p" runs[free]+=" $f" runs[before]+=" $b"
	done
	if [ -n "$before" ]; then
		# shellcheck disable=SC2086 # lists of numbers
		b=$(median ${runs[before]}) p=$(median ${runs[pinned]})
		metric "${name}_before_iops" "$b" IOPS
		log "$name: the older server (pinned) $b, this one $p: $(ratio "$p" "$b")x"
	fi
	# shellcheck disable=SC2086 # lists of numbers
	nbd=$(median ${runs[nbd]}) p=$(median ${runs[pinned]}) f=$(median ${runs[free]})
	[ "$p" -gt 0 ] && [ "$f" -gt 0 ] && [ "$nbd" -gt 0 ] || fail "$name: no I/O completed"
	metric "${name}_nbd_iops" "$nbd" IOPS
	metric "${name}_pinned_iops" "$p" IOPS
	metric "${name}_unpinned_iops" "$f" IOPS
	metric "${name}_pinned_vs_unpinned" "$(ratio "$p" "$f")" x
	log "$name ($bs $rw QD$depth x$FIO_JOBS), medians of $ROUNDS: kernel NBD $nbd, pinned $p ($(ratio "$p" "$nbd")x NBD), unpinned $f ($(ratio "$f" "$nbd")x NBD); pinned/unpinned $(ratio "$p" "$f")x"
done
# The 1 MiB job's requests let the pinned server's threads run on any CPU (net/spread.rs).
grep -q 'large requests: the server threads run on any' "$LAB_WORK/server-pinned.log" ||
	fail "the default server kept its threads pinned through 1 MiB requests"
