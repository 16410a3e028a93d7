# shellcheck shell=bash
# lab-desc: compare-nbd with our queue threads sleeping at once (attach --poll-us 0): run in one --batch boot with compare-nbd to see what the poll before sleeping is worth under TCG
# lab-optional: benchmark (scripts/lab --batch compare-nbd compare-nbd-nopoll)
# lab-timeout: 900
COMPARE_ATTACH_EXTRA="--poll-us 0"
# shellcheck source=compare-nbd.sh
. /lab/scenarios/compare-nbd.sh
