# shellcheck shell=bash
# lab-desc: ublk-host attach against the real array-server on the 3 virtio disks (Q=4 x 2 lanes, split 128K): mq, server-side lanes, dd, fio verify, FUA, ext4, SIGTERM teardown
# lab-smp: 4
# Needs target/release/array-server and target/release/ublk-host. ublk caps hardware queues
# at the CPU count: the lab boots this scenario with 4 vCPUs, and it asserts exactly 4 queues.
# shellcheck source=../multilane.sh
. /lab/multilane.sh

assert_eq "$(nproc)" 4 "guest CPUs (lab-smp header)"
ml_format
ml_partition vol 96M
ml_host h1
ml_assign h1 vol
ml_serve 7000 7080
ublk-host discover --server "$ML_ADDR" --host h1 --secret-file "$LAB_WORK/h1.key"

ml_attach host h1 vol --queues 4 --lanes-per-queue 2 --split 128K --depth 64 --id 0
assert_eq "$ML_DEV" /dev/ublkb0 "device of --id 0"
# shellcheck disable=SC2012 # sysfs names
assert_eq "$(ls /sys/block/ublkb0/mq | wc -l)" 4 "hardware queues in /sys/block/ublkb0/mq"
ml_wait_lanes h1 vol 8
assert_eq "$(ml_lanes h1 vol | tr '\n' ' ')" "0:0 0:1 1:0 1:1 2:0 2:1 3:0 3:1 " "server's data lanes (queue:lane) for h1/vol"
assert_eq "$(cat /sys/block/ublkb0/queue/fua)" 1 "FUA"

dd if=/dev/urandom of="$LAB_WORK/pattern" bs=1M count=8 status=none
dd if="$LAB_WORK/pattern" of=/dev/ublkb0 bs=1M seek=3 oflag=direct status=none
dd if=/dev/ublkb0 of="$LAB_WORK/back" bs=1M skip=3 count=8 iflag=direct status=none
cmp "$LAB_WORK/pattern" "$LAB_WORK/back"
log "dd 8 MiB write + read back through the array: identical"

fio --name=verify --filename=/dev/ublkb0 --ioengine=io_uring --direct=1 --rw=randwrite \
	--bsrange=4k-256k --size=16M --offset=32M --iodepth=16 --verify=crc32c --do_verify=1 \
	--verify_fatal=1 --fsync=32 --minimal >/dev/null
log "fio randwrite 4k-256k with crc32c verify: ok"

# shellcheck disable=SC2046 # two numbers
set -- $(fio_iops --name=rr --filename=/dev/ublkb0 --rw=randread --bs=4k --direct=1 \
	--ioengine=io_uring --iodepth=32 --numjobs=2 --runtime=3 --time_based)
log "fio 4k randread QD32x2: $1 IOPS"
metric array_ublkb0_4k_randread_iops "$1" IOPS
# shellcheck disable=SC2046
set -- $(fio_iops --name=sr --filename=/dev/ublkb0 --rw=read --bs=1M --direct=1 \
	--ioengine=io_uring --iodepth=4 --size=32M)
log "fio 1M sequential read QD4: $1 IOPS (= MiB/s)"
metric array_ublkb0_1m_seqread_mibs "$1" MiB/s

mkfs.ext4 -q -F /dev/ublkb0
mkdir -p "$LAB_WORK/mnt"
mount /dev/ublkb0 "$LAB_WORK/mnt"
cp "$LAB_WORK/pattern" "$LAB_WORK/mnt/file"
umount "$LAB_WORK/mnt"
mount /dev/ublkb0 "$LAB_WORK/mnt"
cmp "$LAB_WORK/pattern" "$LAB_WORK/mnt/file"
umount "$LAB_WORK/mnt"
log "mkfs.ext4 + mount + file round trip: ok"

# SIGTERM tears the device down and the daemon exits on its own
kill -TERM "$(bg_pid host)"
wait_for "[ ! -e /dev/ublkb0 ]" 30 "/dev/ublkb0 to go away after SIGTERM"
wait_for "! bg_alive host" 30 "ublk-host attach to exit after SIGTERM"
