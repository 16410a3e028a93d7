# shellcheck shell=bash
# lab-desc: what a context switch costs in this guest: pipe ping-pong (perf bench sched pipe) between two processes and between two threads of one process, on one CPU and across two
# lab-optional: diagnosis (scripts/lab switch-cost, or --kernel 7.3)
# A request at queue depth 1 crosses fio, ublk-host and array-server (three address spaces)
# where kernel NBD crosses fio, nbdkit and a kernel worker (which borrows the address space it
# finds): under TCG a switch to another address space is far dearer than one within it, and
# this measures by how much (README, "Latency at queue depth 1").

need_bin perf

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
