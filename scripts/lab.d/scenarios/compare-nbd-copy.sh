# shellcheck shell=bash
# lab-desc: compare-nbd with our device forced into copy mode (attach --copy): on a kernel with ublk zero copy, the same table for the copy path
# lab-optional: benchmark (scripts/lab --kernel 7.3 compare-nbd compare-nbd-copy)
# lab-timeout: 900
COMPARE_ATTACH_EXTRA=--copy
# shellcheck source=compare-nbd.sh
. /lab/scenarios/compare-nbd.sh
