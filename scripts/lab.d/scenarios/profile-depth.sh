# shellcheck shell=bash
# lab-desc: where the guest's CPU goes at 4k randread QD32 x Q jobs, on our device (array-server + ublk-host, default mode and --copy) and on kernel NBD (nbdkit): idle share (/proc/stat), busy CPU by thread, interrupts, context switches and TCP segments per request, 200 ms of ftrace (timers, wakeups, kernel work items), a system-wide perf profile
# lab-optional: diagnosis (scripts/lab profile-depth, or --kernel 7.3)
# lab-timeout: 600
# The setup is compare-nbd's (array-server on 3 tmpfs files, Q queues x 1 lane; nbdkit's
# memory plugin behind nbd-client -C Q), so the profile explains that table's QD32 rows.
# Under TCG, perf's cpu-clock samples can land in the idle loop far more often than the CPUs
# are idle (seen on 7.3: 92 % idle by perf while ftrace showed both CPUs busy throughout):
# take the idle share from /proc/stat, which the kernel measures at idle entry and exit.

need_dev /dev/ublk-control /dev/nbd0
need_bin array-server ublk-host nbdkit nbd-client fio perf jq

Q=$(nproc)
USER_HZ=100 # the clock ticks of /proc/*/stat on x86 (the guest has no getconf)
SIZE_MB=128
# From the host: LAB_GUEST_ENV="PROFILE_QD=1" scripts/lab profile-depth
PROFILE_RW=${PROFILE_RW:-randread} PROFILE_BS=${PROFILE_BS:-4k} PROFILE_QD=${PROFILE_QD:-32}
# shellcheck source=../bench.sh
. /lab/bench.sh

bench_array profile 64M "vol:${SIZE_MB}M"
# attach_ours TAG [FLAGS...]: our device, its path in $ours
attach_ours() {
	bench_attach "$1" vol --queues "$Q" --lanes-per-queue 1 "${@:2}"
	ours=$BENCH_DEV
}
attach_ours host
bench_nbd_peer "${SIZE_MB}M" "$Q"

T=/sys/kernel/tracing
[ -d $T/events ] || T=/sys/kernel/debug/tracing
# trace_timers NAME DEV: 200 ms of ftrace during the same fio job: which timers fire, and
# which tasks wake and sleep (a pipeline that waits on timers shows here)
trace_timers() {
	[ -d $T/events ] || return 0
	local name=$1 dev=$2
	echo 0 >$T/tracing_on
	echo >$T/trace
	echo 4096 >$T/buffer_size_kb
	local e
	for e in timer/hrtimer_expire_entry timer/timer_expire_entry sched/sched_switch sched/sched_wakeup \
		irq_vectors/local_timer_entry irq_vectors/reschedule_entry workqueue/workqueue_execute_start; do
		[ ! -e $T/events/$e/enable ] || echo 1 >$T/events/$e/enable
	done
	fio --name=trace --filename="$dev" --rw=$PROFILE_RW --bs=$PROFILE_BS --direct=1 \
		--ioengine=io_uring --iodepth=$PROFILE_QD --numjobs="$Q" --group_reporting --runtime=3 \
		--time_based --size=$((SIZE_MB / 2))M --minimal >/dev/null &
	local fio_pid=$!
	sleep 1
	echo 1 >$T/tracing_on
	sleep 0.2
	echo 0 >$T/tracing_on
	wait "$fio_pid"
	echo 0 >$T/events/enable
	cp $T/trace "$LAB_WORK/trace-$name.txt"
	log "$name: 200 ms of ftrace: events by kind, timers by function, sleeps by task and state"
	grep -v '^#' "$LAB_WORK/trace-$name.txt" |
		awk '{ for (i = 1; i < NF; i++) if ($i ~ /^[0-9]+\.[0-9]+:$/) { print $(i + 1); break } }' |
		sort | uniq -c | sort -rn | awk 'NR <= 12'
	grep -o 'function=[^ ]*' "$LAB_WORK/trace-$name.txt" | sort | uniq -c | sort -rn | awk 'NR <= 12'
	log "$name: work items run by kernel workers, by function"
	awk '/workqueue_execute_start/ { for (i = 1; i < NF; i++) if ($i == "function") print $(i + 1) }' \
		"$LAB_WORK/trace-$name.txt" | sort | uniq -c | sort -rn | awk 'NR <= 12'
	log "$name: switches away from the CPU, by task and its state"
	grep 'sched_switch' "$LAB_WORK/trace-$name.txt" | grep -o 'prev_comm=[^ ]* .*prev_state=[^ ]*' |
		awk '{ print $1, $NF }' | sort | uniq -c | sort -rn | awk 'NR <= 12'
	log "$name: the first 60 lines of the trace"
	grep -v '^#' "$LAB_WORK/trace-$name.txt" | awk 'NR <= 60'
}

# counters DEV FILE: "name value" lines: the device's completed requests ("reads": reads
# and writes), /proc/stat's context
# switches and interrupts, the CPUs' idle and total time, each kind of interrupt of
# /proc/interrupts summed over the CPUs, and the TCP segments sent (both ends of every
# connection are in this guest, so requests and replies alike)
counters() {
	{
		# completed requests of both directions (a write job profiles too)
		echo "reads $(awk '{ print $1 + $5 }' /sys/block/"${1#/dev/}"/stat)"
		awk '$1 == "Tcp:" && !named { for (i = 2; i <= NF; i++) column[$i] = i; named = 1; next }
			$1 == "Tcp:" { print "tcp_segments", $column["OutSegs"] }' /proc/net/snmp
		awk '$1 == "ctxt" || $1 == "intr" { print $1, $2 }
			$1 == "cpu" { print "idle", $5 + $6; print "total", $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat
		grep -E '^ *(LOC|RES|CAL|TLB):' /proc/interrupts |
			awk -v q="$Q" '{ s = 0; for (c = 2; c <= q + 1; c++) s += $c; print $1, s }'
	} >"$2"
}

# thread_times FILE: "comm user-ticks system-ticks" per thread name (utime and stime of
# /proc/*/task/*/stat, digits dropped so that queue-0 and queue-1 add up), for the busy CPU by
# thread: reliable under TCG, where perf's samples are not
thread_times() {
	# a thread that exits between the glob and the read makes cat fail: not an error here
	{ cat /proc/[0-9]*/task/[0-9]*/stat 2>/dev/null || true; } |
		awk '{ sub(/^[0-9]+ \(/, ""); comm = $0; sub(/\).*/, "", comm); rest = $0; sub(/.*\) /, "", rest)
			split(rest, f, " "); gsub(/[0-9]+$/, "N", comm); gsub(/[\/ ]/, "-", comm)
			# a kernel worker renames itself after the work it runs: keyed by name, its
			# whole lifetime would count as busy in the window
			if (comm ~ /^kworker/) comm = "kworker"
			user[comm] += f[12]; kern[comm] += f[13] }
			END { for (c in user) print c, user[c], kern[c] }' >"$1"
}

# profile NAME DEV: fio for 5 s, counters over its middle 3 s: reads per second, idle share,
# busy CPU per request, interrupts and context switches per request; then an ftrace and, in
# a run of its own (sampling perturbs the pipeline), a perf profile by command and by symbol
profile() {
	local name=$1 dev=$2
	fio --output-format=json --name=prof --filename="$dev" --rw=$PROFILE_RW --bs=$PROFILE_BS \
		--direct=1 --ioengine=io_uring --iodepth=$PROFILE_QD --numjobs="$Q" --group_reporting \
		--runtime=5 --time_based --size=$((SIZE_MB / 2))M >"$LAB_WORK/fio-$name.json" &
	local fio_pid=$!
	sleep 1
	counters "$dev" "$LAB_WORK/before-$name"
	thread_times "$LAB_WORK/threads-before-$name"
	sleep 3
	counters "$dev" "$LAB_WORK/after-$name"
	thread_times "$LAB_WORK/threads-after-$name"
	wait "$fio_pid"
	# the change of every counter over the 3 s
	awk 'NR == FNR { was[$1] = $2; next } { print $1, $2 - was[$1] }' \
		"$LAB_WORK/before-$name" "$LAB_WORK/after-$name" >"$LAB_WORK/delta-$name"
	local reads idle cpu_us
	reads=$(awk '$1 == "reads" { print $2 }' "$LAB_WORK/delta-$name")
	idle=$(awk '$1 == "idle" { i = $2 } $1 == "total" { t = $2 } END { printf "%.0f", 100 * i / t }' \
		"$LAB_WORK/delta-$name")
	cpu_us=$(awk -v i="$idle" -v n="$reads" -v q="$Q" 'BEGIN { printf "%.0f", (100 - i) / 100 * q * 3e6 / n }')
	log "$name: $((reads / 3)) reads/s; the CPUs $idle % idle (/proc/stat); $cpu_us us of busy CPU per request"
	log "$name: per request: $(awk -v n="$reads" '$1 !~ /^(reads|idle|total)$/ { printf "%s %.2f  ", $1, $2 / n }' \
		"$LAB_WORK/delta-$name")"
	metric "${name}_reads_per_s" $((reads / 3))
	metric "${name}_idle_pct" "$idle" %
	metric "${name}_cpu_us_per_request" "$cpu_us" us
	log "$name: busy CPU per request by thread, in us: all, in user space, in the kernel (/proc/*/task/*/stat; threads with a digit suffix summed):"
	awk -v n="$reads" -v hz="$USER_HZ" 'NR == FNR { user[$1] = $2; kern[$1] = $3; next }
		{ u = ($2 - user[$1]) * 1e6 / hz / n; k = ($3 - kern[$1]) * 1e6 / hz / n
		  if (u + k > 0) printf "  %-20s %7.1f %7.1f %7.1f\n", $1, u + k, u, k }' \
		"$LAB_WORK/threads-before-$name" "$LAB_WORK/threads-after-$name" | sort -k2 -rn | head -n 12
	metric "${name}_tcp_segments_per_request" \
		"$(awk -v n="$reads" '$1 == "tcp_segments" { printf "%.2f", $2 / n }' "$LAB_WORK/delta-$name")"
	fio --name=prof --filename="$dev" --rw=$PROFILE_RW --bs=$PROFILE_BS --direct=1 \
		--ioengine=io_uring --iodepth=$PROFILE_QD --numjobs="$Q" --group_reporting --runtime=5 \
		--time_based --size=$((SIZE_MB / 2))M --minimal >/dev/null &
	fio_pid=$!
	sleep 1
	perf record -q -e cpu-clock -F 999 -a -g -o "$LAB_WORK/perf-$name.data" -- sleep 3 2>/dev/null || true
	wait "$fio_pid"
	log "$name: fio $(jq -r '.jobs[0] | (if .read.iops > 0 then .read else .write end) | "\(.iops | floor) IOPS, completion latency p50 \(.clat_ns.percentile["50.000000"] / 1000 | floor) us, p99 \(.clat_ns.percentile["99.000000"] / 1000 | floor) us"' "$LAB_WORK/fio-$name.json")"
	trace_timers "$name" "$dev"
	log "$name: by command"
	perf report -q -i "$LAB_WORK/perf-$name.data" --sort comm --stdio -g none 2>/dev/null | head -n 12 || true
	log "$name: top symbols"
	perf report -q -i "$LAB_WORK/perf-$name.data" --sort comm,sym --stdio -g none 2>/dev/null | head -n 45 || true
	log "$name: top symbols by their own time (no children)"
	perf report -q -i "$LAB_WORK/perf-$name.data" --no-children --sort comm,dso,sym --stdio -g none 2>/dev/null | head -n 60 || true
	log "$name: top symbols with callers (children)"
	perf report -q -i "$LAB_WORK/perf-$name.data" --children --sort sym --stdio -g none 2>/dev/null | head -n 60 || true
}

log "clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource), cpuidle $(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || echo none)"
profile ours "$ours"
profile nbd /dev/nbd0
log "ours again in copy mode (attach --copy; the same mode as above on a kernel without zero copy)"
ublk-host detach "${ours#/dev/ublkb}"
attach_ours host-copy --copy
profile ours-copy "$ours"
