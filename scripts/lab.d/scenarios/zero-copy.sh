# shellcheck shell=bash
# lab-desc: 7.3 kernel: attach picks zero copy (UBLK_F_AUTO_BUF_REG, asked with GET_FEATURES), `list` says mode=zero-copy, fio crc32c verify 4k/128k/1M through the request's own pages; --copy forces copy mode; 1 MiB read/write zero copy vs copy (3 rounds, medians)
# lab-optional: needs a kernel whose ublk driver offers automatic buffer registration (6.16+); scripts/test runs it on 7.3 only (LAB_73_SCENARIOS)
# shellcheck source=../multilane.sh
. /lab/multilane.sh

need_dev /dev/ublk-control

ml_format
ml_partition vol 64M
ml_host h1
ml_assign h1 vol
ml_serve 7130 7193

# mode_of ID -> the `mode=` field of the device's list line
mode_of() { ublk-host list | grep "^/dev/ublkb$1[[:space:]]" | grep -o 'mode=[a-z-]*' | cut -d= -f2; }

ml_attach zc h1 vol --queues 2 --lanes-per-queue 2 --split 128K
zc=$ML_DEV
assert_eq "$(mode_of "$ML_ID")" zero-copy "list: mode of $zc (the 7.3 driver offers AUTO_BUF_REG)"
grep -q 'zero-copy) partition' "$LAB_WORK/zc.log" || fail "the ready line does not say zero-copy"

# Writes with verify through fixed buffers, concurrent jobs on disjoint regions, with
# requests split over both lanes (128K, 1M) and small ones (4k) interleaved.
json=$LAB_WORK/fio.json
fio --eta=never --output-format=json --output="$json" \
	--filename="$zc" --ioengine=io_uring --direct=1 --iodepth=8 \
	--verify=crc32c --do_verify=1 --verify_fatal=1 --verify_dump=1 \
	--name=rand4k --rw=randwrite --bs=4k --size=4M --offset=0 --offset_increment=4M --numjobs=2 \
	--name=rand128k --rw=randwrite --bs=128k --size=8M --offset=16M --offset_increment=8M --numjobs=2 \
	--name=seq1m --rw=write --bs=1M --size=16M --offset=32M \
	|| fail "fio with crc32c verify failed on the zero-copy device (see the log)"
sed -n '/^{/,$p' "$json" >"$json.clean"
assert_eq "$(jq '[.jobs[] | select(.error != 0)] | length' "$json.clean")" 0 "fio jobs with an error"
assert_eq "$(jq '[.jobs[] | .read.io_bytes] | add' "$json.clean")" $((40 << 20)) "bytes read back and verified"
log "zero copy: 40 MiB written and verified with crc32c (4k, 128k split, 1M split)"
# region_sum DEV -> checksum of the first 48 MiB, read with O_DIRECT
region_sum() { dd if="$1" bs=1M count=48 iflag=direct status=none | md5sum | cut -d' ' -f1; }
zc_sum=$(region_sum "$zc")
ml_detach zc "$zc"

# The same partition in copy mode: the data written through zero copy reads back the same.
ml_attach cp h1 vol --queues 2 --lanes-per-queue 2 --split 128K --copy
cp=$ML_DEV
assert_eq "$(mode_of "$ML_ID")" copy "list: mode of $cp attached with --copy"
assert_eq "$(region_sum "$cp")" "$zc_sum" "48 MiB read in copy mode vs the same read in zero-copy mode"
ml_detach cp "$cp"

# 1 MiB sequential read and write, zero copy vs copy, alternating devices; medians.
RUNTIME=${ZC_RUNTIME:-3}
ROUNDS=${ZC_ROUNDS:-3}
# bw_of DEV RW -> MiB/s
bw_of() {
	fio --minimal --name=zc --filename="$1" --rw="$2" --bs=1M --iodepth=8 --direct=1 \
		--ioengine=io_uring --runtime="$RUNTIME" --time_based --size=48M |
		awk -F';' '{ printf "%.1f", ($7 + $48) / 1024 }'
}
median() { tr ' ' '\n' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
ml_attach zc2 h1 vol --queues 2 --lanes-per-queue 1
zc=$ML_DEV
ml_attach cp2 h1 vol --queues 2 --lanes-per-queue 1 --copy
cp=$ML_DEV
for rw in read write; do
	zs=() cs=()
	for _ in $(seq "$ROUNDS"); do
		zs+=("$(bw_of "$zc" "$rw")")
		cs+=("$(bw_of "$cp" "$rw")")
	done
	z=$(echo "${zs[*]}" | median)
	c=$(echo "${cs[*]}" | median)
	ratio=$(awk -v a="$z" -v b="$c" 'BEGIN { printf "%.2f", a / b }')
	log "1M $rw QD8: zero copy ${zs[*]} MiB/s (median $z), copy ${cs[*]} (median $c): ${ratio}x"
	metric "zc_vs_copy_1m_$rw" "$ratio" x
done
ml_detach zc2 "$zc"
ml_detach cp2 "$cp"
