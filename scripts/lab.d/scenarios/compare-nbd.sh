# shellcheck shell=bash
# lab-desc: the same fio jobs on our ublk device and on kernel NBD (nbd-client -C Q) against nbdkit, both RAM-backed, in one guest; prints ratios
# lab-optional: benchmark, not a test (performance lives in benchmarks): scripts/lab compare-nbd, or --kernel 7.3
# lab-timeout: 900
# Ours: array-server on 3 tmpfs files, ublk-host attach with Q queues x 1 lane.
# Peer: nbdkit's memory plugin, kernel nbd with Q connections. Same Q, same fio jobs.

need_dev /dev/ublk-control /dev/nbd0
need_bin array-server ublk-host nbdkit nbd-client fio

Q=$(nproc)
SIZE_MB=128
RUNTIME=${COMPARE_RUNTIME:-3}
ROUNDS=${COMPARE_ROUNDS:-3} # medians of this many runs per job and device
# shellcheck source=../bench.sh
. /lab/bench.sh

log "ours: array on 3 tmpfs files, partition of $SIZE_MB MiB, $Q queues x 1 lane"
bench_array compare 64M "vol:${SIZE_MB}M"
# shellcheck disable=SC2086 # COMPARE_ATTACH_EXTRA holds whole flags (with their values)
bench_attach host vol --queues "$Q" --lanes-per-queue 1 $COMPARE_ATTACH_EXTRA
ours=$BENCH_DEV

log "peer: nbdkit memory plugin, kernel nbd with $Q connections"
bench_nbd_peer "${SIZE_MB}M" "$Q"

# name rw bs iodepth
JOBS=(
	"randread-4k-qd1 randread 4k 1"
	"randread-4k-qd32 randread 4k 32"
	"randwrite-4k-qd1 randwrite 4k 1"
	"randwrite-4k-qd32 randwrite 4k 32"
	"read-1m-qd8 read 1M 8"
	"write-1m-qd8 write 1M 8"
)

# fio_figure DEV RW BS DEPTH -> "IOPS KiB/s" (numjobs = Q, summed)
fio_figure() {
	fio --minimal --group_reporting --name=cmp --filename="$1" --rw="$2" --bs="$3" \
		--iodepth="$4" --numjobs="$Q" --direct=1 --ioengine=io_uring --runtime="$RUNTIME" \
		--time_based --size="$((SIZE_MB / 2))M" --offset_increment="$((SIZE_MB / 2 / Q))M" |
		awk -F';' 'END { print $8 + $49, $7 + $48 }'
}

table=$(printf '%-18s %10s %10s %7s %10s %10s' job nbd-iops ublk-iops ratio nbd-MiB/s ublk-MiB/s)
for job in "${JOBS[@]}"; do
	read -r name rw bs depth <<<"$job"
	peer_iops=() peer_kib=() our_iops=() our_kib=()
	# rounds alternate between the two devices, so load drift hits both alike
	for ((round = 1; round <= ROUNDS; round++)); do
		read -r i k < <(fio_figure /dev/nbd0 "$rw" "$bs" "$depth")
		[ "${i%.*}" -gt 0 ] || fail "$name: no I/O completed on /dev/nbd0"
		peer_iops+=("$i") peer_kib+=("$k")
		read -r i k < <(fio_figure "$ours" "$rw" "$bs" "$depth")
		[ "${i%.*}" -gt 0 ] || fail "$name: no I/O completed on $ours"
		our_iops+=("$i") our_kib+=("$k")
	done
	pi=$(median "${peer_iops[@]}") oi=$(median "${our_iops[@]}")
	pk=$(median "${peer_kib[@]}") ok=$(median "${our_kib[@]}")
	ratio=$(awk -v a="$oi" -v b="$pi" 'BEGIN { printf "%.2f", a / b }')
	row=$(awk -v n="$name" -v pi="$pi" -v oi="$oi" -v pk="$pk" -v ok="$ok" -v r="$ratio" \
		'BEGIN { printf "%-18s %10.0f %10.0f %6sx %10.1f %10.1f", n, pi, oi, r, pk / 1024, ok / 1024 }')
	log "$row   (nbd: ${peer_iops[*]}; ours: ${our_iops[*]})"
	table+=$'\n'"$row"
	metric "ratio_$name" "$ratio" x
done

cat <<REPORT

======== ublk (Multilane, $Q queues x 1 lane) vs kernel NBD (nbd-client -C $Q, nbdkit memory) ========
$table
(fio io_uring direct, numjobs=$Q, medians of $ROUNDS alternating runs of ${RUNTIME}s; both RAM-backed; TCG guest: only ratios mean anything)
REPORT
