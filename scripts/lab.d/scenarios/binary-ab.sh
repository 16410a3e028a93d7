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

ROUNDS=${AB_ROUNDS:-3} RUNTIME=3
Q=$(nproc)
# AB_ONLY=name:name... (from LAB_GUEST_ENV) runs only those workloads, e.g.
# AB_ONLY=randwrite-4k-qd1:randwrite-4k-qd32 AB_ROUNDS=7 for a closer look at two rows.
WORKLOADS=("randread-4k-qd1 randread 4k 1" "randread-4k-qd32 randread 4k 32"
	"randwrite-4k-qd1 randwrite 4k 1" "randwrite-4k-qd32 randwrite 4k 32" "read-1M-qd8 read 1M 8"
	"write-1M-qd8 write 1M 8")
# AB_WORKLOADS=rw/bs/depth:... replaces the list (LAB_GUEST_ENV takes no spaces), e.g.
# AB_WORKLOADS=randwrite/16k/32:randwrite/64k/32.
if [ -n "${AB_WORKLOADS:-}" ]; then
	WORKLOADS=()
	IFS=':' read -r -a entries <<<"$AB_WORKLOADS"
	for entry in "${entries[@]}"; do
		IFS=/ read -r rw bs depth <<<"$entry"
		WORKLOADS+=("$rw-$bs-qd$depth $rw $bs $depth")
	done
fi
if [ -n "${AB_ONLY:-}" ]; then
	chosen=()
	for workload in "${WORKLOADS[@]}"; do
		case ":$AB_ONLY:" in *":${workload%% *}:"*) chosen+=("$workload") ;; esac
	done
	WORKLOADS=("${chosen[@]}")
fi
JOBS=${AB_JOBS:-$Q} # fio jobs; LAB_GUEST_ENV=AB_JOBS=1 measures a single stream
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

bench_ab "A: array-server-a + ublk-host-a, B: this tree ($Q queues x 1 lane each, fio $JOBS jobs)" \
	"$dev_a" "$dev_b" "${WORKLOADS[@]}"
