# shellcheck shell=bash
# lab-desc: power-cut with a volatile write cache below the server (nbdkit cache filter, writeback, in guest RAM, over the virtio disks): acknowledged FUA/FLUSH writes survive only if the server really syncs
# lab-disk-cache: none
# lab-power-cut: boot 1 writes and cuts the power, boot 2 serves the same disks and verifies
# The power-cut scenario (see power-cut.sh) with the array's members on nbd devices whose
# server, nbdkit's cache filter in writeback mode, keeps writes in RAM until a flush: the
# volatile disk cache a real power cut empties. On the bare virtio disks the server's O_DIRECT
# writes reach the images at once, so only this variant can catch a skipped fdatasync.
PC_WCACHE=1
# shellcheck source=power-cut.sh
. /lab/scenarios/power-cut.sh
