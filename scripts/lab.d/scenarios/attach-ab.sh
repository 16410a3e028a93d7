# shellcheck shell=bash
# lab-desc: two of our devices on one array-server, attached with different ublk-host flags (A: A_FLAGS, the defaults unless edited; B: AB_FLAGS), and kernel NBD beside them; 4k random reads and writes at QD1 and QD32 in alternating rounds; medians and B/A ratios
# lab-optional: benchmark of one attach option against the defaults, in one boot (scripts/lab attach-ab, or --kernel 7.3)
# lab-smp: 2
# lab-timeout: 900
# Both devices are partitions of the same array, served by the same server, attached by the
# same host: only the flags differ. Rounds alternate between the devices so that the drift of
# a TCG guest hits all of them alike.
need_dev /dev/ublk-control /dev/nbd0
need_bin array-server ublk-host nbdkit nbd-client fio jq

A_FLAGS=() AB_FLAGS=(--copy) # edit here: the guest does not see the host environment
ROUNDS=5 RUNTIME=3
Q=$(nproc)
# shellcheck source=../bench.sh
. /lab/bench.sh

bench_array attach-ab 48M a:64M b:64M
bench_attach host-a a --queues "$Q" --lanes-per-queue 1 "${A_FLAGS[@]}"
dev_a=$BENCH_DEV
bench_attach host-b b --queues "$Q" --lanes-per-queue 1 "${AB_FLAGS[@]}"
dev_b=$BENCH_DEV
log "A: $dev_a (${A_FLAGS[*]:-defaults}), B: $dev_b (${AB_FLAGS[*]})"
bench_nbd_peer 64M "$Q"

# figure DEV RW DEPTH -> IOPS (Q jobs, summed)
figure() {
	fio_iops --name=ab --filename="$1" --rw="$2" --bs=4k --direct=1 --ioengine=io_uring \
		--iodepth="$3" --numjobs="$Q" --runtime="$RUNTIME" --time_based --size=32M |
		awk '{ printf "%.0f", $1 + $2 }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

table=$(printf '%-14s %8s %8s %8s %7s %7s' job nbd A B B/A A/nbd)
for job in "randread 1" "randread 32" "randwrite 1" "randwrite 32"; do
	read -r rw depth <<<"$job"
	name=$rw-qd$depth
	nbd=() a=() b=()
	for ((round = 1; round <= ROUNDS; round++)); do
		nbd+=("$(figure /dev/nbd0 "$rw" "$depth")") a+=("$(figure "$dev_a" "$rw" "$depth")")
		b+=("$(figure "$dev_b" "$rw" "$depth")")
		log "$name round $round: nbd ${nbd[-1]}  A ${a[-1]}  B ${b[-1]} IOPS"
	done
	mn=$(median "${nbd[@]}") ma=$(median "${a[@]}") mb=$(median "${b[@]}")
	row=$(printf '%-14s %8s %8s %8s %6sx %6sx' "$name" "$mn" "$ma" "$mb" "$(ratio "$mb" "$ma")" "$(ratio "$ma" "$mn")")
	table+=$'\n'"$row"
	metric "b_over_a_${name//-/_}" "$(ratio "$mb" "$ma")" x
done
cat <<REPORT

======== A: ${A_FLAGS[*]:-ublk-host defaults}, B: ${AB_FLAGS[*]} ($Q queues x 1 lane, fio 4k, $Q jobs, medians of $ROUNDS alternating rounds of ${RUNTIME}s) ========
$table
REPORT
