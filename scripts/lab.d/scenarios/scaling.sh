# shellcheck shell=bash
# lab-desc: the lab scaling table: queues 1/2 x lanes per queue 1/2 x split off/128K x copy/zero copy (where the driver offers it), fio 4k randread QD32 and 1 MiB read QD8 per queue, array-server (2 threads) on tmpfs files; one metric per cell
# lab-optional: benchmark, not a test: scripts/bench-scaling-lab runs it on 6.12 and 7.3 and prints the table (or scripts/lab [--kernel 7.3] scaling)
# lab-smp: 2
# lab-timeout: 900
# shellcheck source=../multilane.sh
. /lab/multilane.sh

# Every cell: attach with that configuration, fio io_uring direct with one job per queue
# (each pinned to its own CPU, so each queue gets its own submitter), medians of
# SCALING_ROUNDS runs of SCALING_RUNTIME s, detach. Metric names encode the configuration
# only (the kernel is the run's): q2_l1_split_zc_4k_qd32_iops, q1_l2_nosplit_copy_1m_qd8_mibs.
# A tmpfs-backed server, as in compare-nbd: the virtio disks under TCG would hide the rest.
need_dev /dev/ublk-control
need_bin array-server ublk-host fio

RUNTIME=${SCALING_RUNTIME:-3}
ROUNDS=${SCALING_ROUNDS:-1}
SPLIT=128K
SIZE_MB=128
PORT=7150
# fio may take this long past its runtime (startup, ramp down under TCG) before we call it hung
FIO_GRACE=60
store=/dev/shm/scaling
rm -rf "$store" # a --batch boot may have run this before
mkdir -p "$store"
on_cleanup "rm -rf $store" # tmpfs pages are guest RAM: none left for the next scenario of a --batch boot
RAM=(--disk "$store/d0" --disk "$store/d1" --disk "$store/d2")
array-server format "${RAM[@]}" --size 64M --chunk 64K --admin-token-file "$LAB_WORK/ram.token" >/dev/null
array-server host create bench --secret-file "$LAB_WORK/bench.key" "${RAM[@]}" >/dev/null
array-server partition create vol "${SIZE_MB}M" "${RAM[@]}" >/dev/null
array-server assign bench vol "${RAM[@]}" >/dev/null
bg_start server array-server serve "${RAM[@]}" --listen "127.0.0.1:$PORT" --threads 2 --no-admin
ML_ADDR=127.0.0.1:$PORT # ml_attach's server
wait_for "ublk-host discover --server $ML_ADDR --host bench --secret-file $LAB_WORK/bench.key >/dev/null 2>&1" 30 "the tmpfs array-server"
metric kernel "$(uname -r)"
metric runtime_s "$RUNTIME" s
metric rounds "$ROUNDS"

# fio_cell DEV JOBS RW BS DEPTH -> "IOPS MiB/s" (one job per queue, pinned, summed)
fio_cell() {
	local out=$LAB_WORK/fio.out
	timeout $((RUNTIME + FIO_GRACE)) fio --minimal --group_reporting --name=scaling --filename="$1" \
		--numjobs="$2" --cpus_allowed="0-$(($2 - 1))" --cpus_allowed_policy=split \
		--rw="$3" --bs="$4" --iodepth="$5" --direct=1 --ioengine=io_uring \
		--runtime="$RUNTIME" --time_based --size="$((SIZE_MB / $2))M" --offset_increment="$((SIZE_MB / $2))M" \
		>"$out" || fail "fio $3 $4 QD$5 on $1 did not finish within $((RUNTIME + FIO_GRACE)) s"
	awk -F';' 'END { printf "%.0f %.1f\n", $8, $7 / 1024 }' "$out"
}

# cell DEV Q NAME RW BS DEPTH FIELD: median over ROUNDS of FIELD (1 = IOPS, 2 = MiB/s)
cell() {
	local dev=$1 q=$2 name=$3 rw=$4 bs=$5 depth=$6 field=$7 runs=() r figures
	for r in $(seq "$ROUNDS"); do
		figures=$(fio_cell "$dev" "$q" "$rw" "$bs" "$depth")
		runs+=("$(cut -d' ' -f"$field" <<<"$figures")")
		[ "${figures%% *}" -gt 0 ] || fail "$name: no I/O completed on $dev (round $r)"
	done
	median "${runs[@]}"
}

ZC_OFFERED=unknown
cells=0
# config Q LANES SPLIT MODE: attach, both workloads, detach (no metric when MODE=zc and the
# driver offers no zero copy)
config() {
	local q=$1 lanes=$2 split=$3 mode=$4 args=() tag iops mibs
	[ "$split" = off ] || args+=(--split "$SPLIT")
	[ "$mode" = zc ] || args+=(--copy)
	tag=q${q}_l${lanes}_$([ "$split" = off ] && echo nosplit || echo split)_$mode
	ml_attach "$tag" bench vol --queues "$q" --lanes-per-queue "$lanes" "${args[@]}"
	assert_eq "$(find "/sys/block/ublkb$ML_ID/mq" -mindepth 1 -maxdepth 1 | wc -l)" "$q" "hardware queues of $ML_DEV"
	if [ "$mode" = zc ]; then
		if grep -q ' ready .* zero-copy ' "$LAB_WORK/$tag.log"; then
			ZC_OFFERED=1
		else
			ZC_OFFERED=0
			log "this kernel's ublk driver offers no zero copy: copy mode only"
		fi
	fi
	if [ "$mode" = copy ] || [ "$ZC_OFFERED" = 1 ]; then
		iops=$(cell "$ML_DEV" "$q" "$tag 4k" randread 4k 32 1)
		mibs=$(cell "$ML_DEV" "$q" "$tag 1m" read 1M 8 2)
		log "$tag: 4k randread QD32 $iops IOPS, 1 MiB read QD8 $mibs MiB/s"
		metric "${tag}_4k_qd32_iops" "$iops" IOPS
		metric "${tag}_1m_qd8_mibs" "$mibs" MiB/s
		cells=$((cells + 2))
	fi
	ml_detach "$tag" "$ML_DEV"
}

# Fill the partition once, so reads hit the server's pages and not tmpfs holes.
ml_attach fill bench vol --queues 1 --copy
dd if=/dev/zero of="$ML_DEV" bs=1M count="$SIZE_MB" oflag=direct status=none
ml_detach fill "$ML_DEV"

for mode in copy zc; do
	[ "$ZC_OFFERED" != 0 ] || break
	for q in 1 2; do
		for lanes in 1 2; do
			for split in off on; do
				[ "$ZC_OFFERED" != 0 ] || break 3
				config "$q" "$lanes" "$split" "$mode"
			done
		done
	done
done
metric zero_copy_offered "$ZC_OFFERED"
metric cells "$cells"
[ "$cells" -ge 16 ] || fail "only $cells cells measured, expected 16 (copy) or 32 (copy + zero copy)"
