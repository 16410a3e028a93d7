# shellcheck shell=bash
# lab-desc: native multipath adds up bandwidth: the server behind two veth pairs, each shaped to the same rate (netem rate on the server's side, which carries the read data); 1 MiB sequential reads over both paths reach at least 1.7x what one path gives
# shellcheck source=../multilane.sh
. /lab/multilane.sh

# Each path's rate: low enough that the shaping, not the emulated CPU, is the limit.
RATE=32mbit
# netem's queue, packets: room for every read in flight, so the shaping delays and never drops.
QUEUE_PACKETS=100000
MIN_RATIO_PCT=170
RUN_SECS=10

ml_format
ml_partition vol 64M
ml_host h1
ml_assign h1 vol
ml_serve_paths 7170 7199
for n in 0 1; do
	read -r _ veth_server _ <<<"$(ml_path_net "$n")"
	ip netns exec "$ML_NETNS" tc qdisc add dev "$veth_server" root netem rate "$RATE" limit "$QUEUE_PACKETS"
done

# read_bw NAME ARGS...: attach with ARGS, fill nothing (reads of a fresh partition are
# zeros, served the same), read 1 MiB blocks sequentially for RUN_SECS; bytes/s in
# $LAB_WORK/NAME.bw.
read_bw() {
	local name=$1 bw
	shift
	ml_attach "$name" h1 vol --queues 1 --lanes-per-queue 2 "$@"
	fio --eta=never --output-format=json --output="$LAB_WORK/$name.json" --filename="$ML_DEV" \
		--ioengine=io_uring --direct=1 --iodepth=8 --name=seq --rw=read --bs=1M \
		--time_based --runtime="$RUN_SECS" >/dev/null 2>&1 || fail "fio over $name failed"
	sed -n '/^{/,$p' "$LAB_WORK/$name.json" >"$LAB_WORK/$name.clean"
	bw=$(jq '.jobs[0].read.bw_bytes' "$LAB_WORK/$name.clean")
	ml_detach "$name" "$ML_DEV"
	echo "$bw" >"$LAB_WORK/$name.bw"
}

read_bw one-path
read_bw two-paths --server "${ML_ADDRS[1]}"
one=$(cat "$LAB_WORK/one-path.bw")
two=$(cat "$LAB_WORK/two-paths.bw")
[ "$one" -gt 0 ] || fail "no bandwidth over one path"
ratio_pct=$((two * 100 / one))
log "1 MiB sequential reads: one path $((one >> 20)) MiB/s, two paths $((two >> 20)) MiB/s (${ratio_pct}%)"
[ "$ratio_pct" -ge "$MIN_RATIO_PCT" ] || fail "two paths give ${ratio_pct}% of one (need ${MIN_RATIO_PCT}%)"
metric one_path_bw $((one >> 20)) MiB/s
metric two_path_bw $((two >> 20)) MiB/s
metric two_path_ratio_pct "$ratio_pct" %
