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
KEY=$LAB_WORK/host.key
store=/dev/shm/attach-ab
rm -rf "$store" && mkdir -p "$store"
on_cleanup "rm -rf $store"
DISKS=(--disk "$store/d0" --disk "$store/d1" --disk "$store/d2")
{
	array-server format "${DISKS[@]}" --size 48M --chunk 64K --admin-token-file "$LAB_WORK/token"
	array-server host create bench --secret-file "$KEY" "${DISKS[@]}"
	array-server partition create a 64M "${DISKS[@]}"
	array-server partition create b 64M "${DISKS[@]}"
	array-server assign bench a "${DISKS[@]}"
	array-server assign bench b "${DISKS[@]}"
} >/dev/null 2>&1 || fail "setting up the array"
bg_start server array-server serve "${DISKS[@]}" --listen 127.0.0.1:7700 --threads "$Q" --no-admin
CONN=(--server 127.0.0.1:7700 --host bench --secret-file "$KEY")
wait_for "ublk-host discover ${CONN[*]} >/dev/null 2>&1" 30 "array-server"

# attach TAG PARTITION [FLAGS...] -> the device path
attach() {
	local tag=$1 partition=$2
	shift 2
	bg_start "$tag" ublk-host attach "${CONN[@]}" --partition "$partition" --queues "$Q" \
		--lanes-per-queue 1 "$@"
	wait_for "grep -q ' ready ' $LAB_WORK/$tag.log" 60 "device $tag"
	local dev
	dev=$(grep -o '/dev/ublkb[0-9]*' "$LAB_WORK/$tag.log" | head -n1)
	on_cleanup "ublk-host detach ${dev#/dev/ublkb} 2>/dev/null || true"
	echo "$dev"
}
dev_a=$(attach host-a a "${A_FLAGS[@]}" | tail -n1)
dev_b=$(attach host-b b "${AB_FLAGS[@]}" | tail -n1)
log "A: $dev_a (${A_FLAGS[*]:-defaults}), B: $dev_b (${AB_FLAGS[*]})"

bg_start nbdkit nbdkit -f -i 127.0.0.1 -p 10809 memory 64M
wait_for "ss -ltn | grep -q :10809" 30 "nbdkit"
nbd-client -N '' 127.0.0.1 10809 /dev/nbd0 -C "$Q" -b 512 >/dev/null
on_cleanup "nbd-client -d /dev/nbd0 >/dev/null 2>&1 || true"
wait_for "[ \$(blockdev --getsize64 /dev/nbd0) -gt 0 ]" 30 "/dev/nbd0 to get its size"

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
