# shellcheck shell=bash
# lab-desc: array-server on the virtio disks; attach Q=4 x C=1 then Q=4 x C=2: mq has 4 queues and the server reports exactly Q x C data lanes for the host+partition, each (queue, lane) once
# lab-smp: 4
# ublk caps hardware queues at the CPU count: this scenario needs (and asserts) 4 vCPUs.
# shellcheck source=../multilane.sh
. /lab/multilane.sh

assert_eq "$(nproc)" 4 "guest CPUs (lab-smp header)"
ml_format
ml_partition vol 32M
ml_host h1
ml_assign h1 vol
ml_serve 7110 7190 # also asserts: members are /dev/vda..vdc, block devices, virtio_blk

# Q=4, C=1: one lane per queue
ml_attach host1 h1 vol --queues 4 --lanes-per-queue 1
dev=$ML_DEV
assert_eq "$(ls "/sys/block/${dev#/dev/}/mq" | wc -l)" 4 "hardware queues in /sys/block/${dev#/dev/}/mq"
grep -Eq "$dev( as [^ ]+)? ready \\(4 queues x 1 lanes\\)" "$LAB_WORK/host1.log" || fail "ready line does not say 4 queues x 1 lanes"
ml_wait_lanes h1 vol 4
assert_eq "$(ml_lanes h1 vol | tr '\n' ' ')" "0:0 1:0 2:0 3:0 " "server's data lanes (queue:lane) for h1/vol, Q=4 C=1"
# the whole server: nothing else holds lanes
assert_eq "$(ml_ctl sessions --count)" 4 "data lanes on the whole server"
log "Q=4 C=1: 4 hardware queues, the server reports lanes $(ml_lanes h1 vol | tr '\n' ' ')"

# the lanes carry the device's I/O (a write and a read travel; counters are the server's)
dd if=/dev/urandom of="$LAB_WORK/pattern" bs=64K count=16 status=none
dd if="$LAB_WORK/pattern" of="$dev" bs=64K oflag=direct status=none
cmp "$LAB_WORK/pattern" <(dd if="$dev" bs=64K count=16 iflag=direct status=none)
assert_eq "$(ml_sessions_of h1 vol | jq -s 'map(.bytes_written) | add')" $((1 << 20)) "bytes the server wrote for h1/vol"

ml_detach host1 "$dev"
ml_wait_lanes h1 vol 0

# Q=4, C=2: two lanes per queue, each (queue, lane) exactly once
ml_attach host2 h1 vol --queues 4 --lanes-per-queue 2
dev=$ML_DEV
assert_eq "$(ls "/sys/block/${dev#/dev/}/mq" | wc -l)" 4 "hardware queues in /sys/block/${dev#/dev/}/mq"
grep -Eq "$dev( as [^ ]+)? ready \\(4 queues x 2 lanes\\)" "$LAB_WORK/host2.log" || fail "ready line does not say 4 queues x 2 lanes"
ml_wait_lanes h1 vol 8
assert_eq "$(ml_lanes h1 vol | tr '\n' ' ')" "0:0 0:1 1:0 1:1 2:0 2:1 3:0 3:1 " "server's data lanes (queue:lane) for h1/vol, Q=4 C=2"
assert_eq "$(ml_ctl sessions --count)" 8 "data lanes on the whole server"
# the data survived the re-attach
cmp "$LAB_WORK/pattern" <(dd if="$dev" bs=64K count=16 iflag=direct status=none)
log "Q=4 C=2: 4 hardware queues, the server reports lanes $(ml_lanes h1 vol | tr '\n' ' ')"
ml_detach host2 "$dev"
ml_wait_lanes h1 vol 0
