# shellcheck shell=bash
# Multilane VM lab — helpers for scenarios. Runs in the GUEST under bash (copied into the
# initramfs; busybox provides the small tools). The guest runner sources this file, then the
# scenario, in a fresh bash per scenario with `set -eE -o pipefail` and an ERR trap: any failing
# command fails the scenario, and the reason names the file, line and command.
# Why bash and not busybox ash: Debian's busybox-static ash always runs its own applets before
# PATH (FEATURE_SH_STANDALONE), so `ip`, `dd`, `blockdev`... would be busybox's, not the real
# iproute2/coreutils/util-linux tools. In bash, PATH decides (real tools come first).
#
#   log MSG...                 print a timestamped line (guest uptime)
#   fail MSG...                record MSG as the reason and exit: scenario FAILs
#   skip MSG...                record MSG and exit: scenario SKIPs (the host counts SKIP as failure)
#   assert_eq ACTUAL EXPECTED MSG
#   wait_for TARGET SECONDS [WHAT]
#                              poll (every 0.1 s) until TARGET holds, or fail after SECONDS.
#                              TARGET is a path (starts with '/', no spaces: waits for it to
#                              exist) or a shell command (eval'd; waits until it exits 0).
#   need_bin NAME...           fail loudly unless NAME is on PATH (project binaries live in
#                              /usr/local/bin when target/release/NAME existed on the host)
#   need_dev PATH...           skip unless PATH exists (e.g. /dev/ublk-control)
#   bg_start NAME CMD [ARG...] run CMD in the background, output to $LAB_WORK/NAME.log; it is
#                              stopped (TERM, then KILL after 10 s) at scenario end and its log
#                              is printed. Sets BG_PID.
#   bg_pid NAME                print the pid of background process NAME (the last started)
#   bg_alive NAME              exit 0 if background process NAME still runs
#   bg_stop NAME [SIG]         stop it now (default TERM; KILL after 10 s); returns its status
#   on_cleanup CMD             run CMD (eval'd) at scenario end, last registered first, BEFORE the
#                              background processes are stopped (e.g. delete a ublk device
#                              while its daemon still runs)
#   metric NAME VALUE [UNIT]   report a figure: `LAB-METRIC <scenario> NAME VALUE UNIT`
#   fio_iops FIO-ARGS...       run fio (adds --minimal --group_reporting), print "READ WRITE" IOPS
#   now_ms                     guest uptime in milliseconds
#   carry TEXT...              (power-cut scenarios, boot 1) send TEXT to boot 2 over the result
#                              serial port: `LAB-CARRY <scenario> TEXT`; nothing touches a disk
#   carried                    (boot 2) print the lines boot 1 carried, one a line
#   power_cut                  (boot 1) cut the power now, with no sync: announces the carried
#                              line count (`LAB-POWERCUT`), then sysrq b; does not return
#   $LAB_PHASE                 1, or 2 in the second boot of a power-cut scenario
#
# Never `fail` inside $(...) or a pipeline expecting it to stop the scenario: it only exits that
# subshell (the reason is still recorded and set -e usually stops the scenario right after).

LAB_SCENARIO=${LAB_SCENARIO:-unknown}
LAB_WORK=${LAB_WORK:-/tmp/lab/$LAB_SCENARIO}
LAB_RESULTS_TTY=${LAB_RESULTS_TTY:-/dev/ttyS1}
mkdir -p "$LAB_WORK"
LAB_REASON_FILE=$LAB_WORK/.reason
LAB_BG_FILE=$LAB_WORK/.bg
LAB_CLEANUP_FILE=$LAB_WORK/.cleanup
: >"$LAB_BG_FILE"
: >"$LAB_CLEANUP_FILE"

now_ms() {
	local up
	read -r up _ </proc/uptime
	# "123.45" -> 123450; the "1" prefix avoids an octal reading of "05"
	echo $((${up%.*} * 1000 + 1${up#*.}0 - 1000))
}

log() {
	local ms
	ms=$(now_ms)
	printf '[%s %d.%03d] %s\n' "$LAB_SCENARIO" $((ms / 1000)) $((ms % 1000)) "$*"
}

lab_set_reason() {
	# first reason wins: it is the cause, later ones are consequences
	[ -s "$LAB_REASON_FILE" ] || printf '%s\n' "$*" | tr '\n' ' ' | sed 's/ *$//' >"$LAB_REASON_FILE"
}

fail() {
	lab_set_reason "$*"
	log "FAIL: $*"
	exit 1
}

skip() {
	lab_set_reason "$*"
	log "SKIP: $*"
	exit 77
}

assert_eq() {
	[ "$1" = "$2" ] || fail "${3:-assert_eq}: expected '$2', got '$1'"
}

wait_for() {
	local target="$1" secs="$2" what="${3:-$1}" end
	end=$(($(now_ms) + secs * 1000))
	while :; do
		case $target in
		/*" "*) if eval "$target" >/dev/null 2>&1; then return 0; fi ;;
		/*) if [ -e "$target" ]; then return 0; fi ;;
		*) if eval "$target" >/dev/null 2>&1; then return 0; fi ;;
		esac
		[ "$(now_ms)" -lt "$end" ] || fail "timed out after ${secs}s waiting for: $what"
		sleep 0.1
	done
}

need_bin() {
	local b
	for b in "$@"; do
		command -v "$b" >/dev/null 2>&1 ||
			fail "missing binary '$b' in the guest (project binaries come from target/release/ on the host: run 'cargo build --release' first)"
	done
}

need_dev() {
	local d
	for d in "$@"; do
		[ -e "$d" ] || skip "missing $d (kernel module not loaded?)"
	done
}

bg_start() {
	local name="$1"
	shift
	"$@" >"$LAB_WORK/$name.log" 2>&1 </dev/null &
	BG_PID=$!
	echo "$BG_PID $name" >>"$LAB_BG_FILE"
	log "started $name (pid $BG_PID): $*"
}

bg_pid() { # the last one started under that name (a restarted daemon keeps its name)
	local pid name found=
	while read -r pid name; do
		[ "$name" = "$1" ] && found=$pid
	done <"$LAB_BG_FILE"
	[ -n "$found" ] || fail "bg_pid: no background process named '$1'"
	echo "$found"
}

bg_alive() {
	local pid
	pid=$(bg_pid "$1")
	kill -0 "$pid" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null
}

# Stop pid $1 (name $2) with signal $3; escalate to KILL after 10 s. Returns the exit status.
lab_stop_pid() {
	local pid="$1" name="$2" sig="${3:-TERM}" end rc=0
	if kill -0 "$pid" 2>/dev/null; then
		kill "-$sig" "$pid" 2>/dev/null || true
		end=$(($(now_ms) + 10000))
		while kill -0 "$pid" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; do
			if [ "$(now_ms)" -ge "$end" ]; then
				log "$name (pid $pid) ignored SIG$sig for 10 s: sending KILL"
				kill -KILL "$pid" 2>/dev/null || true
				break
			fi
			sleep 0.1
		done
	fi
	wait "$pid" 2>/dev/null || rc=$?
	return "$rc"
}

bg_stop() {
	local pid rc=0
	pid=$(bg_pid "$1")
	lab_stop_pid "$pid" "$1" "${2:-TERM}" || rc=$?
	log "stopped $1 (pid $pid): status $rc"
	return "$rc"
}

on_cleanup() {
	printf '%s\n' "$*" >>"$LAB_CLEANUP_FILE"
}

metric() {
	local line="LAB-METRIC $LAB_SCENARIO $1 $2 ${3:-}"
	echo "$line"
	echo "$line" >"$LAB_RESULTS_TTY" 2>/dev/null || true
}

LAB_PHASE=${LAB_PHASE:-1}
LAB_CARRIED=0

carry() {
	local line="LAB-CARRY $LAB_SCENARIO $*"
	echo "$line"
	# the tty's last close waits until the bytes are sent: they are out of the guest on return
	echo "$line" >"$LAB_RESULTS_TTY" || fail "cannot write to $LAB_RESULTS_TTY"
	LAB_CARRIED=$((LAB_CARRIED + 1))
}

carried() {
	[ -r "/lab/carry/$LAB_SCENARIO" ] || fail "nothing carried from boot 1 (/lab/carry/$LAB_SCENARIO)"
	cat "/lab/carry/$LAB_SCENARIO"
}

power_cut() {
	local line="LAB-POWERCUT $LAB_SCENARIO $LAB_CARRIED"
	echo 1 >/proc/sys/kernel/sysrq
	echo "$line"
	echo "$line" >"$LAB_RESULTS_TTY"
	log "power cut: sysrq b (no sync)"
	echo b >/proc/sysrq-trigger
	# not reached: the machine is gone
	sleep 60
	fail "still running 60 s after sysrq b"
}

# median NUMBER... -> the middle value (the lower middle of an even count)
median() {
	printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

fio_iops() {
	local out
	out=$(fio --minimal --group_reporting "$@") || fail "fio failed: fio $*"
	# terse v3: field 8 = read IOPS, field 49 = write IOPS
	echo "$out" | awk -F';' 'END { print $8, $49 }'
}

# --- runner side (called by /init; scenarios do not use these) ---------------------------

lab_cleanup() {
	local rc="$1" cmd pid name cleanup_failed=0
	set +eE
	trap - EXIT TERM INT ERR
	# not a pipeline: the loops must run in this shell (wait, variables)
	while IFS= read -r cmd; do
		[ -n "$cmd" ] || continue
		log "cleanup: $cmd"
		if ! (eval "$cmd"); then
			log "cleanup step failed: $cmd"
			[ "$rc" != 0 ] || lab_set_reason "cleanup step failed: $cmd"
			cleanup_failed=1
		fi
	done <<EOF
$(tac "$LAB_CLEANUP_FILE")
EOF
	[ "$cleanup_failed" = 0 ] || [ "$rc" != 0 ] || rc=1
	while read -r pid name; do
		[ -n "$pid" ] || continue
		lab_stop_pid "$pid" "$name" TERM
		echo "--- $name (pid $pid) output:"
		sed "s/^/[$name] /" "$LAB_WORK/$name.log"
	done <<EOF
$(tac "$LAB_BG_FILE")
EOF
	if [ "$rc" != 0 ] && [ "$rc" != 77 ] && [ ! -s "$LAB_REASON_FILE" ]; then
		lab_set_reason "a command failed with status $rc (set -e); see the log above"
	fi
	exit "$rc"
}

lab_on_err() {
	lab_set_reason "${3##*/}:$2: '$4' failed with status $1"
}

# Called by the runner at top level (not inside a function: bash's exit-from-ERR-trap inside a
# sourced file within a function corrupts its function context). The runner then sources the
# scenario: bash -c '. /lab/lib.sh; lab_setup; . "/lab/scenarios/$LAB_SCENARIO.sh"'
lab_setup() {
	log "scenario start"
	trap 'lab_cleanup $?' EXIT
	trap 'lab_set_reason "stopped by signal (timeout?)"; exit 143' TERM INT
	trap 'lab_on_err $? $LINENO "${BASH_SOURCE[0]}" "$BASH_COMMAND"' ERR
	set -eE -o pipefail
}
