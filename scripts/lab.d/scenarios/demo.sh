# shellcheck shell=bash
# lab-desc: the README's demo: array on 3 disks, partition attached as /dev/ublkb0 (2 queues x 2 lanes), ext4, data written and read back, fio, a report
# Runs in the lab guest (disks /dev/vda..vdc) or natively via scripts/demo (DEMO_DISKS=files).

need_dev /dev/ublk-control
need_bin array-server ublk-host fio mkfs.ext4 jq

read -r -a disks <<<"${DEMO_DISKS:-/dev/vda /dev/vdb /dev/vdc}"
DISK_ARGS=()
for disk in "${disks[@]}"; do DISK_ARGS+=(--disk "$disk"); done
PORT=${DEMO_PORT:-7700}
ADMIN=127.0.0.1:${DEMO_ADMIN_PORT:-7780}
TOKEN=$LAB_WORK/admin.token
KEY=$LAB_WORK/demo.key
QUEUES=${DEMO_QUEUES:-2}
LANES=${DEMO_LANES:-2}
MOUNT=$LAB_WORK/mnt

log "1. format an array over ${#disks[@]} disks: ${disks[*]}"
array-server format "${DISK_ARGS[@]}" ${DEMO_DISK_SIZE:+--size "$DEMO_DISK_SIZE"} --chunk 64K \
	--admin-token-file "$TOKEN" --force >/dev/null
array-server host create demo --secret-file "$KEY" "${DISK_ARGS[@]}" >/dev/null
array-server partition create vol0 128M "${DISK_ARGS[@]}"
array-server assign demo vol0 "${DISK_ARGS[@]}"

log "2. serve it on :$PORT (admin page on $ADMIN)"
bg_start server array-server serve "${DISK_ARGS[@]}" --listen "127.0.0.1:$PORT" \
	--admin "$ADMIN" --admin-token-file "$TOKEN"
CONN=(--server "127.0.0.1:$PORT" --host demo --secret-file "$KEY")
wait_for "ublk-host discover ${CONN[*]} >/dev/null 2>&1" 30 "the server to answer discovery"
ublk-host discover "${CONN[@]}"

log "3. attach vol0 as a ublk disk: $QUEUES queues x $LANES lanes, split above 128K"
bg_start host ublk-host attach "${CONN[@]}" --partition vol0 --queues "$QUEUES" \
	--lanes-per-queue "$LANES" --split 128K
wait_for "grep -q ' ready ' $LAB_WORK/host.log" 60 "the device to be ready"
dev=$(grep -o '/dev/ublkb[0-9]*' "$LAB_WORK/host.log" | head -n1)
id=${dev#/dev/ublkb}
on_cleanup "ublk-host detach $id 2>/dev/null || true"
wait_for "$dev" 30
log "$(grep ' ready ' "$LAB_WORK/host.log")"

log "4. mkfs.ext4, mount, write a tree of files"
mkfs.ext4 -q -F "$dev"
mkdir -p "$MOUNT"
mount "$dev" "$MOUNT"
on_cleanup "umount $MOUNT 2>/dev/null || true"
for dir in a b c; do
	mkdir -p "$MOUNT/$dir"
	for n in 1 2 3 4; do
		dd if=/dev/urandom of="$MOUNT/$dir/file$n" bs=64K count=$((n * 4)) status=none
	done
done
(cd "$MOUNT" && find . -type f | sort | xargs sha256sum) >"$LAB_WORK/written.sha256"
sync
umount "$MOUNT"
log "5. read back after a remount (page cache dropped)"
echo 3 >/proc/sys/vm/drop_caches
mount "$dev" "$MOUNT"
(cd "$MOUNT" && sha256sum -c --quiet "$LAB_WORK/written.sha256") || fail "files read back differ"
files=$(wc -l <"$LAB_WORK/written.sha256")
log "$files files read back identical ($(du -sh "$MOUNT" | cut -f1))"
umount "$MOUNT"

log "6. fio on $dev (direct, io_uring)"
# shellcheck disable=SC2046 # two numbers
set -- $(fio_iops --name=randrw --filename="$dev" --rw=randrw --bs=4k --direct=1 \
	--ioengine=io_uring --iodepth=16 --numjobs="$QUEUES" --runtime=3 --time_based --size=64M)
read_iops=$1 write_iops=$2
seq_json=$LAB_WORK/seq.json
fio --name=seqread --filename="$dev" --rw=read --bs=1M --direct=1 --ioengine=io_uring \
	--iodepth=8 --runtime=3 --time_based --size=64M --output-format=json --output="$seq_json" >/dev/null
seq_mibs=$(jq '.jobs[0].read.bw_bytes / 1048576 | floor' "$seq_json")
metric demo_4k_randrw_read_iops "$read_iops" IOPS
metric demo_4k_randrw_write_iops "$write_iops" IOPS
metric demo_1m_seqread "$seq_mibs" MiB/s

log "7. what the server sees: lanes per queue"
sessions=$(array-server ctl --admin "http://$ADMIN" --token-file "$TOKEN" --json sessions)
lanes_table=$(jq -r '.sessions[] | select(.kind == "data") |
	"queue \(.queue) lane \(.lane)  \(.peer)  ops=\(.ops)  read=\(.bytes_read / 1048576 | floor) MiB  written=\(.bytes_written / 1048576 | floor) MiB"' \
	<<<"$sessions" | sort)
data_lanes=$(wc -l <<<"$lanes_table")
assert_eq "$data_lanes" $((QUEUES * LANES)) "data lanes the server reports (queues x lanes)"

cat <<REPORT

================ Multilane demo ================
device      $dev  ($(blockdev --getsize64 "$dev") bytes, $(ls "/sys/block/${dev#/dev/}/mq" | wc -l) hardware queues)
array       ${#disks[@]} disks striped, chunk 64 KiB; partition vol0 (128 MiB) for host "demo"
filesystem  ext4: $files files written, synced, remounted, read back identical
fio         4k randrw QD16 x $QUEUES jobs: $read_iops read + $write_iops write IOPS
            1M sequential read QD8: $seq_mibs MiB/s
lanes       $data_lanes TCP lanes, each owned by one queue:
$(sed 's/^/            /' <<<"$lanes_table")
================================================
REPORT
