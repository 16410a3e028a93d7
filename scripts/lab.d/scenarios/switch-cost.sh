# shellcheck shell=bash
# lab-desc: what a context switch costs in this guest (perf bench sched pipe between two processes and between two threads, on one CPU and across two), and what the ublk hop costs a request (libublk's null target against null_blk at QD1)
# lab-optional: diagnosis (scripts/lab switch-cost, or --kernel 7.3)
# A request at queue depth 1 crosses fio, ublk-host and array-server (three address spaces)
# where kernel NBD crosses fio, nbdkit and a kernel worker (which borrows the address space it
# finds): under TCG a switch to another address space is far dearer than one within it, and
# this measures by how much (README, "Per-request cost"). The ublk hop itself, without any
# network, is libublk's own null target against the kernel's null_blk, 4k reads at QD1.

need_bin perf fio libublk-null
need_dev /dev/ublk-control /dev/nullb0

ROUNDS=${SWITCH_ROUNDS:-3}
LOOPS=${SWITCH_LOOPS:-20000}

# one ping-pong run -> microseconds per round trip (two switches each way on one CPU)
pipe_us() { # cpus [-T]
	local cpus=$1
	shift
	taskset -c "$cpus" perf bench sched pipe -l "$LOOPS" "$@" 2>/dev/null |
		awk '/usecs\/op/ {print $1}'
}

for place in 0 0,1; do
	for kind in processes threads; do
		flag=()
		[ "$kind" = threads ] && flag=(-T)
		runs=()
		for _ in $(seq "$ROUNDS"); do
			us=$(pipe_us "$place" "${flag[@]}")
			[ -n "$us" ] || fail "perf bench sched pipe printed no usecs/op ($kind on CPUs $place)"
			runs+=("$us")
		done
		med=$(median "${runs[@]}")
		name="${kind}_cpus_${place/,/_}"
		log "pipe ping-pong between two $kind on CPUs $place: ${runs[*]} us per round trip (median $med)"
		metric "${name}_us" "$med" us
	done
done

# per-request time at QD1 (one job, pinned to CPU 0 with the daemon): 1e6 / IOPS
qd1_us() { # device
	local dev=$1 iops
	# shellcheck disable=SC2046 # two numbers
	set -- $(fio_iops --name=qd1 --filename="$dev" --rw=randread --bs=4k --direct=1 \
		--ioengine=io_uring --iodepth=1 --numjobs=1 --runtime=3 --time_based --cpus_allowed=0)
	iops=${1:-0}
	[ "$iops" -gt 0 ] || fail "fio on $dev reported no reads"
	echo $((1000000 / iops))
}

bg_start ublk-null taskset -c 0 libublk-null add -n 0 -q 1 -d 64 --foreground
on_cleanup "[ ! -e /sys/block/ublkb0 ] || libublk-null del -n 0"
wait_for /dev/ublkb0 60 "/dev/ublkb0 to appear"
null_runs=() ublk_runs=()
for _ in $(seq "$ROUNDS"); do
	null_runs+=("$(qd1_us /dev/nullb0)")
	ublk_runs+=("$(qd1_us /dev/ublkb0)")
done
null_us=$(median "${null_runs[@]}")
ublk_us=$(median "${ublk_runs[@]}")
log "4k randread QD1 per request: null_blk ${null_runs[*]} us, libublk null ${ublk_runs[*]} us (medians $null_us, $ublk_us): the ublk hop costs $((ublk_us - null_us)) us"
metric null_blk_qd1_us "$null_us" us
metric ublk_null_qd1_us "$ublk_us" us
metric ublk_hop_us $((ublk_us - null_us)) us
libublk-null del -n 0
wait_for "[ ! -e /dev/ublkb0 ]" 30 "/dev/ublkb0 to go away after del"
