# shellcheck shell=bash
# lab-desc: 1 MiB sequential read and write QD8 and 4k random read and write QD32, zero copy vs --copy (2 queues x 1 lane, array-server on tmpfs files), alternating devices, medians of ZC_ROUNDS (3) runs of ZC_RUNTIME (3) s; prints the ratios
# lab-optional: benchmark; needs a kernel whose ublk driver offers automatic buffer registration (7.3: scripts/lab --kernel 7.3 zero-copy-bench)
# lab-timeout: 900
# shellcheck source=../multilane.sh
. /lab/multilane.sh

need_dev /dev/ublk-control

# 1 MiB sequential read and write, zero copy vs copy, alternating devices; medians. A
# second server on tmpfs files (as in compare-nbd): the virtio disks under TCG would be the
# bottleneck and hide the copy. One partition per device: two devices of one partition from
# one host would share lane keys and fence each other's lanes (see README, "Noticed").
RUNTIME=${ZC_RUNTIME:-3}
ROUNDS=${ZC_ROUNDS:-3}
store=/dev/shm/zc
mkdir -p "$store"
on_cleanup "rm -rf $store" # tmpfs pages are guest RAM: none left for the next scenario of a --batch boot
RAM=(--disk "$store/d0" --disk "$store/d1" --disk "$store/d2")
array-server format "${RAM[@]}" --size 96M --chunk 64K --admin-token-file "$LAB_WORK/ram.token" >/dev/null
array-server host create bench --secret-file "$LAB_WORK/bench.key" "${RAM[@]}" >/dev/null
for partition in fast-zc fast-cp; do
	array-server partition create "$partition" 128M "${RAM[@]}" >/dev/null
	array-server assign bench "$partition" "${RAM[@]}" >/dev/null
done
bg_start ram array-server serve "${RAM[@]}" --listen 127.0.0.1:7131 --threads 2 --no-admin
CONN=(--server 127.0.0.1:7131 --host bench --secret-file "$LAB_WORK/bench.key")
wait_for "ublk-host discover ${CONN[*]} >/dev/null 2>&1" 30 "the tmpfs array-server"
# rate_of DEV RW BS DEPTH -> MiB/s at 1M, IOPS otherwise (a run that hangs fails the
# scenario with the daemons' logs)
rate_of() {
	timeout 60 fio --minimal --name=zc --filename="$1" --rw="$2" --bs="$3" --iodepth="$4" --direct=1 \
		--ioengine=io_uring --runtime="$RUNTIME" --time_based --size=96M >"$LAB_WORK/bw.out" ||
		fail "fio $2 on $1 did not finish: $(tail -n 5 "$LAB_WORK"/zc2.log "$LAB_WORK"/cp2.log)"
	if [ "$3" = 1M ]; then
		awk -F';' '{ printf "%.1f", ($7 + $48) / 1024 }' "$LAB_WORK/bw.out"
	else
		awk -F';' '{ printf "%.0f", $8 + $49 }' "$LAB_WORK/bw.out"
	fi
}
attach_ram() { # NAME ARGS... -> ML_DEV
	local name=$1
	shift
	bg_start "$name" ublk-host attach "${CONN[@]}" --queues 2 --lanes-per-queue 1 "$@"
	wait_for "grep -q ' ready ' $LAB_WORK/$name.log || ! bg_alive $name" 60 "ublk-host attach ($name)"
	ML_DEV=$(grep -o '/dev/ublkb[0-9]*' "$LAB_WORK/$name.log" | head -n1)
	[ -n "$ML_DEV" ] || fail "$name did not attach: $(tail -n 3 "$LAB_WORK/$name.log")"
	on_cleanup "[ ! -e $ML_DEV ] || ublk-host detach ${ML_DEV#/dev/ublkb}"
	wait_for "$ML_DEV" 30
}
attach_ram zc2 --partition fast-zc
zc=$ML_DEV
attach_ram cp2 --partition fast-cp --copy
cp=$ML_DEV
for job in "read 1M 8 1m_read MiB/s" "write 1M 8 1m_write MiB/s" \
	"randread 4k 32 4k_randread_qd32 IOPS" "randwrite 4k 32 4k_randwrite_qd32 IOPS"; do
	read -r rw bs depth name unit <<<"$job"
	zs=() cs=()
	for _ in $(seq "$ROUNDS"); do
		z=$(rate_of "$zc" "$rw" "$bs" "$depth")
		c=$(rate_of "$cp" "$rw" "$bs" "$depth")
		zs+=("$z") cs+=("$c")
	done
	z=$(median "${zs[@]}")
	c=$(median "${cs[@]}")
	ratio=$(awk -v a="$z" -v b="$c" 'BEGIN { printf "%.2f", a / b }')
	log "$bs $rw QD$depth (2 queues x 1 lane, tmpfs server): zero copy ${zs[*]} $unit (median $z), copy ${cs[*]} (median $c): ${ratio}x"
	metric "zc_vs_copy_$name" "$ratio" x
done
ml_detach zc2 "$zc"
ml_detach cp2 "$cp"
