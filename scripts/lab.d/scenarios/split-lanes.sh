# shellcheck shell=bash
# lab-desc: one 1 MiB O_DIRECT read by one process (dd) reaches ublk-host as one request, is split (--split 128K) and its parts travel on >= 2 lanes (the server's per-lane counters)
# shellcheck source=../multilane.sh
. /lab/multilane.sh

ml_format
ml_partition vol 16M
ml_host h1
ml_assign h1 vol
ml_serve 7140 7193
ml_attach host h1 vol --queues 2 --lanes-per-queue 2 --split 128K
dev=$ML_DEV
blk=${dev#/dev/}
ml_wait_lanes h1 vol 4
# the block layer must not split 1 MiB itself (then the split would not be ours)
max_kb=$(cat "/sys/block/$blk/queue/max_sectors_kb")
[ "$max_kb" -ge 1024 ] || fail "max_sectors_kb is $max_kb: the kernel would split a 1 MiB request"

before=$(ml_lane_counters h1 vol)
kreads0=$(awk '{print $1}' "/sys/block/$blk/stat")
taskset -c 0 dd if="$dev" of=/dev/null bs=1M count=1 iflag=direct status=none
kreads1=$(awk '{print $1}' "/sys/block/$blk/stat")
after=$(ml_lane_counters h1 vol)
log "per-lane counters (queue:lane id reads bytes_read writes bytes_written) before:"$'\n'"$before"
log "after:"$'\n'"$after"

assert_eq "$((kreads1 - kreads0))" 1 "read requests the kernel completed for the one dd read"
# join by queue:lane + session id (same lanes before and after), deltas of reads and bytes_read
# (awk, not join: the guest has no join)
deltas=$(awk 'NR == FNR {r[$1 "/" $2] = $3; b[$1 "/" $2] = $4; next}
	($1 "/" $2) in r {k = $1 "/" $2; print k, $3 - r[k], $4 - b[k]}' <(echo "$before") <(echo "$after"))
assert_eq "$(wc -l <<<"$deltas")" 4 "lanes present before and after (no reconnect)"
moved=$(awk '$2 > 0' <<<"$deltas" | wc -l)
parts=$(awk '{s += $2} END {print s}' <<<"$deltas")
bytes=$(awk '{s += $3} END {print s}' <<<"$deltas")
queues=$(awk '$2 > 0 {split($1, a, ":"); print a[1]}' <<<"$deltas" | sort -u | wc -l)
log "lane deltas (queue:lane/id reads bytes):"$'\n'"$deltas"
assert_eq "$bytes" $((1 << 20)) "bytes the server read for the one 1 MiB read"
[ "$parts" -ge 2 ] || fail "the 1 MiB read reached the server as $parts part(s): not split"
[ "$moved" -ge 2 ] || fail "the 1 MiB read travelled on $moved lane(s), expected >= 2"
assert_eq "$queues" 1 "queues whose lanes carried the read (one request = one queue)"
log "one 1 MiB O_DIRECT read: 1 kernel request, $parts parts on $moved lanes of one queue"
metric split_1m_parts "$parts" parts
metric split_1m_lanes "$moved" lanes

ml_detach host "$dev"
