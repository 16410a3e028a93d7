# shellcheck shell=bash
# lab-desc: two of our devices on one array-server, attached with different ublk-host flags (A: AB_A_FLAGS, the defaults unless set; B: AB_B_FLAGS, --copy unless set), and kernel NBD beside them; 4k random reads and writes at QD1 and QD32 in alternating rounds; medians and B/A ratios
# lab-optional: benchmark of one attach option against the defaults, in one boot (scripts/lab attach-ab, or --kernel 7.3)
# lab-smp: 2
# lab-timeout: 900
# Both devices are partitions of the same array, served by the same server, attached by the
# same host: only the flags differ. Rounds alternate between the devices so that the drift of
# a TCG guest hits all of them alike.
need_dev /dev/ublk-control /dev/nbd0
need_bin array-server ublk-host nbdkit nbd-client fio jq

# From the host, words joined by ':' (LAB_GUEST_ENV takes no spaces):
#   LAB_GUEST_ENV="AB_A_FLAGS=--copy AB_B_FLAGS=--copy:--poll-us:0" scripts/lab attach-ab
# AB_JOBS sets fio's job count (default: one per queue; 1 measures a single stream).
a_flags=${AB_A_FLAGS:-} b_flags=${AB_B_FLAGS:---copy}
read -r -a A_FLAGS <<<"${a_flags//:/ }"
read -r -a AB_FLAGS <<<"${b_flags//:/ }"
ROUNDS=5 RUNTIME=3
Q=$(nproc)
JOBS=${AB_JOBS:-$Q}
# shellcheck source=../bench.sh
. /lab/bench.sh

bench_array attach-ab 48M a:64M b:64M
bench_attach host-a a --queues "$Q" --lanes-per-queue 1 "${A_FLAGS[@]}"
dev_a=$BENCH_DEV
bench_attach host-b b --queues "$Q" --lanes-per-queue 1 "${AB_FLAGS[@]}"
dev_b=$BENCH_DEV
log "A: $dev_a (${A_FLAGS[*]:-defaults}), B: $dev_b (${AB_FLAGS[*]})"
bench_nbd_peer 64M "$Q"

bench_ab "A: ${A_FLAGS[*]:-ublk-host defaults}, B: ${AB_FLAGS[*]} ($Q queues x 1 lane, fio 4k, $JOBS jobs)" \
	"$dev_a" "$dev_b" "randread-qd1 randread 4k 1" "randread-qd32 randread 4k 32" \
	"randwrite-qd1 randwrite 4k 1" "randwrite-qd32 randwrite 4k 32"
