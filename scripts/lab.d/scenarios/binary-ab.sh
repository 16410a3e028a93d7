# shellcheck shell=bash
# lab-desc: two builds of our stack in one boot: A = array-server-a and ublk-host-a (an older build, copied in by scripts/bench-lab-ab), B = this tree's; each its own tmpfs array, server and device, kernel NBD beside them; 4k random reads and writes at QD1 and QD32 and 1 MiB sequential at QD8 in alternating rounds; medians and B/A ratios
# lab-optional: A/B of a code change, in one boot (scripts/bench-lab-ab OLD-RELEASE-DIR, or with --kernel 7.3)
# lab-smp: 2
# lab-timeout: 1200
# Needs 2G of guest RAM (scripts/bench-lab-ab sets LAB_MEM).
# Under TCG one boot can run a third slower or faster than the next, more than most changes
# are worth: comparing two builds takes both in the same boot, measured in turns. Both
# servers share the guest's CPUs, but only the one whose device fio drives is busy.
need_dev /dev/ublk-control /dev/nbd0
need_bin array-server ublk-host array-server-a ublk-host-a nbdkit nbd-client fio jq

ROUNDS=3 RUNTIME=3
Q=$(nproc)
# shellcheck source=../bench.sh
. /lab/bench.sh

BENCH_SERVER=array-server-a BENCH_SERVER_TAG=server-a BENCH_HOST=ublk-host-a BENCH_PORT=7701
bench_array binary-a 48M vol:64M
bench_attach host-a vol --queues "$Q" --lanes-per-queue 1
dev_a=$BENCH_DEV
BENCH_SERVER=array-server BENCH_SERVER_TAG=server-b BENCH_HOST=ublk-host BENCH_PORT=7700
bench_array binary-b 48M vol:64M
bench_attach host-b vol --queues "$Q" --lanes-per-queue 1
dev_b=$BENCH_DEV
log "A (array-server-a, ublk-host-a): $dev_a; B (this tree): $dev_b"
bench_nbd_peer 64M "$Q"

# figure DEV RW BS DEPTH -> IOPS (Q jobs, summed)
figure() {
	fio_iops --name=ab --filename="$1" --rw="$2" --bs="$3" --direct=1 --ioengine=io_uring \
		--iodepth="$4" --numjobs="$Q" --runtime="$RUNTIME" --time_based --size=32M |
		awk '{ printf "%.0f", $1 + $2 }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

table=$(printf '%-16s %8s %8s %8s %7s %7s %7s' job nbd A B B/A A/nbd B/nbd)
for job in "randread 4k 1" "randread 4k 32" "randwrite 4k 1" "randwrite 4k 32" "read 1M 8" "write 1M 8"; do
	read -r rw bs depth <<<"$job"
	name=$rw-$bs-qd$depth
	nbd=() a=() b=()
	for ((round = 1; round <= ROUNDS; round++)); do
		nbd+=("$(figure /dev/nbd0 "$rw" "$bs" "$depth")")
		a+=("$(figure "$dev_a" "$rw" "$bs" "$depth")")
		b+=("$(figure "$dev_b" "$rw" "$bs" "$depth")")
		log "$name round $round: nbd ${nbd[-1]}  A ${a[-1]}  B ${b[-1]} IOPS"
	done
	mn=$(median "${nbd[@]}") ma=$(median "${a[@]}") mb=$(median "${b[@]}")
	row=$(printf '%-16s %8s %8s %8s %6sx %6sx %6sx' "$name" "$mn" "$ma" "$mb" "$(ratio "$mb" "$ma")" \
		"$(ratio "$ma" "$mn")" "$(ratio "$mb" "$mn")")
	table+=$'\n'"$row"
	metric "b_over_a_${name//-/_}" "$(ratio "$mb" "$ma")" x
	metric "b_over_nbd_${name//-/_}" "$(ratio "$mb" "$mn")" x
done
cat <<REPORT

======== A: array-server-a + ublk-host-a, B: this tree ($Q queues x 1 lane each, fio $Q jobs, IOPS, medians of $ROUNDS alternating rounds of ${RUNTIME}s) ========
$table
REPORT
