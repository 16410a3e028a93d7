# shellcheck shell=bash
# lab-desc: our ublk device vs kernel NBD in interleaved rounds: fio 4k randread QD1 (p50/p90/p99) and QD32x2; optional thread samples, perf profile, ftrace
# lab-optional: diagnosis; `UBLK_LAT_BEFORE=<old ublk-host> scripts/lab ublk-lat` also measures an older binary in the same boot
# Every device (ublk devices of one array-server on tmpfs, each on a partition of its own: one
# host may attach a partition only once; nbdkit-backed nbd) stays attached and the rounds
# alternate between them, so the host's load (the TCG vCPUs share the machine with everything
# else; stalls of 5-17 ms show in ftrace as late ticks) hits all of them alike: compare figures
# within one boot only. The guest does not see the host environment: edit the defaults below.

need_dev /dev/ublk-control /dev/nbd0
need_bin array-server ublk-host nbdkit nbd-client fio jq

# shellcheck source=../bench.sh
. /lab/bench.sh
RUNTIME=${LAT_RUNTIME:-3}
ROUNDS=${LAT_ROUNDS:-2}
# what else to run (edit here: the guest does not see the host environment)
LAT_SAMPLE=${LAT_SAMPLE:-} LAT_PERF=${LAT_PERF:-} LAT_TRACE=${LAT_TRACE:-} TRACE_QD=32 TRACE_JOBS=2

bench_array ublk-lat 48M lat0:32M lat1:32M lat2:32M
CONN="${BENCH_CONN[*]}" # set by bench_array

# thread_ticks PID -> "tid comm ticks" per thread
thread_ticks() {
	local t
	for t in /proc/"$1"/task/*; do
		sed 's/^\([0-9]*\) (\(.*\)) /\1 \2 /' "$t/stat" 2>/dev/null | awk '{ print $1, $2, $15 + $16 }'
	done
}
# sample PID N: N samples (every 20 ms) of each thread's state, syscall and kernel stack top
sample() {
	local i t
	for ((i = 0; i < $2; i++)); do
		for t in /proc/"$1"/task/*; do
			printf '%s sys=%s k=%s\n' "$(cut -d' ' -f2,3 "$t/stat" 2>/dev/null)" \
				"$(cut -d' ' -f1 "$t/syscall" 2>/dev/null)" \
				"$(head -n 2 "$t/stack" 2>/dev/null | awk '{ printf "%s,", $2 }')"
		done
		sleep 0.02
	done | sort | uniq -c | sort -rn | head -n 12
}

DEVS=() PIDS=()
id=0
# binary:lanes per queue
for spec in ${LAT_DEVICES:-ublk-host-before:1 ublk-host:1 ublk-host:2}; do
	bin=${spec%%:*} lanes=${spec#*:}
	command -v "$bin" >/dev/null || continue
	tag=${bin}-l$lanes
	# shellcheck disable=SC2086 # CONN is several words
	bg_start "$tag" "$bin" attach $CONN --partition "lat$id" --queues 2 --lanes-per-queue "$lanes" --id "$id"
	wait_for "grep -q 'ready' $LAB_WORK/$tag.log" 60 "$bin to report the device ready"
	wait_for /sys/block/ublkb$id/mq 10
	on_cleanup "ublk-host detach $id || true"
	DEVS+=("$tag=/dev/ublkb$id") PIDS+=("$(bg_pid "$tag") $(bg_pid server)")
	id=$((id + 1))
done
bench_nbd_peer 64M 2
DEVS+=("nbd=/dev/nbd0") PIDS+=("$(bg_pid nbdkit)")

for ((round = 1; round <= ROUNDS; round++)); do
	for i in "${!DEVS[@]}"; do
		name=${DEVS[$i]%%=*} dev=${DEVS[$i]#*=}
		out=$(fio --output-format=json --name=qd1 --filename="$dev" --rw=randread --bs=4k \
			--direct=1 --ioengine=io_uring --iodepth=1 --runtime="$RUNTIME" --time_based --size=32M)
		read -r iops p50 p90 p99 < <(jq -r '.jobs[0].read | [(.iops | floor),
			(.clat_ns.percentile["50.000000"], .clat_ns.percentile["90.000000"],
			 .clat_ns.percentile["99.000000"] | . / 1000 | floor)] | @tsv' <<<"$out")
		# shellcheck disable=SC2046 # two numbers
		set -- $(fio_iops --name=qd32 --filename="$dev" --rw=randread --bs=4k --direct=1 \
			--ioengine=io_uring --iodepth=32 --numjobs=2 --runtime="$RUNTIME" --time_based --size=32M)
		log "round $round $name: QD1 $iops IOPS p50 ${p50}us p90 ${p90}us p99 ${p99}us | QD32x2 $1 IOPS"
		metric "r${round}_${name//-/_}_qd1_iops" "$iops" IOPS
		metric "r${round}_${name//-/_}_qd1_p50_us" "$p50" us
		metric "r${round}_${name//-/_}_qd32x2_iops" "$1" IOPS
	done
done

for i in "${!DEVS[@]}"; do
	name=${DEVS[$i]%%=*} dev=${DEVS[$i]#*=}
	[ "$name" != nbd ] && [ -n "$LAT_SAMPLE" ] || continue
	pid=${PIDS[$i]%% *}
	thread_ticks "$pid" >"$LAB_WORK/t0"
	fio --name=smp --filename="$dev" --rw=randread --bs=4k --direct=1 --ioengine=io_uring \
		--iodepth=32 --numjobs=2 --runtime=3 --time_based --size=32M --minimal >/dev/null &
	fio_pid=$!
	sleep 0.5
	log "$name during QD32x2: thread samples (count, comm state, syscall, kernel stack)"
	sample "$pid" 50
	wait "$fio_pid"
	thread_ticks "$pid" >"$LAB_WORK/t1"
	log "$name: cpu ticks per thread over that run"
	awk 'NR == FNR { t[$1] = $3; next } { d = $3 - t[$1]; if (d > 0) print "   ", $1, $2, d }' \
		"$LAB_WORK/t0" "$LAB_WORK/t1"
done

# system-wide cpu-clock profile during 3 s of QD1 reads on each of our devices (needs perf)
if command -v perf >/dev/null && [ -n "$LAT_PERF" ]; then
	for i in "${!DEVS[@]}"; do
		name=${DEVS[$i]%%=*} dev=${DEVS[$i]#*=}
		[ "${name#ublk-host-before}" = "$name" ] || continue
		fio --name=prof --filename="$dev" --rw=randread --bs=4k --direct=1 --ioengine=io_uring \
			--iodepth=1 --runtime=4 --time_based --size=32M --minimal >/dev/null &
		fio_pid=$!
		sleep 0.5
		perf record -q -e cpu-clock -F 499 -a -o "$LAB_WORK/perf-$i.data" -- sleep 3 2>/dev/null || true
		wait "$fio_pid"
		log "$name: QD1 profile, by command"
		perf report -q -i "$LAB_WORK/perf-$i.data" --sort comm --stdio 2>/dev/null | head -n 12 || true
		log "$name: QD1 profile, top symbols"
		perf report -q -i "$LAB_WORK/perf-$i.data" --sort comm,sym --stdio 2>/dev/null | head -n 40 || true
	done
fi

# ftrace of 60 ms of QD1 reads on each of our devices: io_uring, scheduler, block events
T=/sys/kernel/tracing
[ -d $T/events ] || T=/sys/kernel/debug/tracing
if [ -n "$LAT_TRACE" ] && [ -d $T/events ]; then
	for i in "${!DEVS[@]}"; do
		name=${DEVS[$i]%%=*} dev=${DEVS[$i]#*=}
		[ "${name#ublk-host-before}" = "$name" ] || continue
		echo 0 >$T/tracing_on
		echo >$T/trace
		echo 8192 >$T/buffer_size_kb
		for e in io_uring/io_uring_submit_req io_uring/io_uring_complete io_uring/io_uring_task_add \
			io_uring/io_uring_poll_arm io_uring/io_uring_queue_async_work sched/sched_wakeup \
			sched/sched_switch block/block_rq_issue block/block_rq_complete \
			syscalls/sys_enter_io_uring_enter syscalls/sys_exit_io_uring_enter \
			syscalls/sys_enter_recvfrom syscalls/sys_exit_recvfrom syscalls/sys_enter_sendto \
			syscalls/sys_exit_sendto irq_vectors/reschedule_entry \
			irq_vectors/call_function_single_entry timer/hrtimer_expire_entry; do
			[ ! -e $T/events/$e/enable ] || echo 1 >$T/events/$e/enable
		done
		fio --name=trace --filename="$dev" --rw=randread --bs=4k --direct=1 --ioengine=io_uring \
			--iodepth="$TRACE_QD" --numjobs="$TRACE_JOBS" --group_reporting --runtime=5 --time_based --size=32M --minimal >/dev/null &
		fio_pid=$!
		base=$(awk '{ print $1 }' /sys/block/"${dev#/dev/}"/stat)
		wait_for "[ \$(awk '{ print \$1 }' /sys/block/${dev#/dev/}/stat) -gt $((base + 50)) ]" 30 "fio reading $dev"
		echo 1 >$T/tracing_on
		sleep 0.05
		echo 0 >$T/tracing_on
		wait "$fio_pid"
		echo 0 >$T/events/enable
		cp $T/trace "$LAB_WORK/trace-$i.txt"
		log "$name: ftrace of QD$TRACE_QD x$TRACE_JOBS reads ($(wc -l <"$LAB_WORK/trace-$i.txt") lines)"
		grep -v '^#' "$LAB_WORK/trace-$i.txt" | grep -v ' sleep-\| bash-\| cat-\| cp-\| awk-\| init-' | awk 'NR <= 2500'
	done
fi
