//! Native multipath: which path a request takes (sans-IO).
//!
//! A device may reach its array server over several networks ("paths"), one address
//! each. Every queue keeps `lanes_per_queue` lanes on every path; lane `l` of path `p` is
//! wire lane number `p * lanes_per_queue + l`, so every lane has its own fencing key on
//! the server.
//!
//! # Path choice
//!
//! [`PathPolicy::QueueDepth`] (the default) sends each request to the usable path with
//! the fewest bytes outstanding, like NVMe's queue-depth I/O policy, so two healthy paths
//! add up their bandwidth and a slow or silent path (whose bytes pile up unanswered) gets
//! no more work; ties go to the path after the one used last. [`PathPolicy::RoundRobin`]
//! rotates over the usable paths. A path is usable while at least one of its lanes is
//! up; when none is, every path is a candidate (the lanes then queue the request and
//! wait, or fail it, by the failure policy).
//!
//! # A path that dies
//!
//! A lane whose connection fails (or goes silent past the dead-lane bound) reconnects
//! trying its own path's address first, then the others'. Every attempt carries a new
//! lane epoch under the lane's own key, so a connection made over a surviving network is
//! a *takeover*: the server fences the old connection (closes it and waits for every
//! request it admitted) before it answers. Only then does the lane reissue its in-flight
//! requests, reads and writes alike, over the new connection: no stale write from the
//! dead path can land after a reissued or a newer one, and the kernel sees no error. A
//! lane running over another path's network keeps trying its own address in the
//! background ("homing"); once that path answers again, the new connection (again a
//! newer epoch, fencing the borrowed one) replaces the borrowed one, so a path that
//! returns is used again without operator action.

/// How requests are spread over the paths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PathPolicy {
    /// The usable path with the fewest bytes outstanding.
    #[default]
    QueueDepth,
    /// Usable paths in turn.
    RoundRobin,
}

impl std::str::FromStr for PathPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<PathPolicy, String> {
        match text {
            "queue-depth" => Ok(PathPolicy::QueueDepth),
            "round-robin" => Ok(PathPolicy::RoundRobin),
            other => Err(format!(
                "unknown path policy {other:?} (queue-depth or round-robin)"
            )),
        }
    }
}

/// What the chooser knows about one path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PathLoad {
    /// At least one of the path's lanes is up.
    pub usable: bool,
    /// Bytes of the requests outstanding on the path's lanes.
    pub bytes: u64,
}

/// Picks the path for the next request; `last` is the path used last (ties and
/// round-robin start after it). `loads` must not be empty.
pub(crate) fn choose(policy: PathPolicy, loads: &[PathLoad], last: usize) -> usize {
    let count = loads.len();
    let any_usable = loads.iter().any(|load| load.usable);
    let candidates = (1..=count)
        .map(|step| (last + step) % count)
        .filter(|&path| loads[path].usable || !any_usable);
    match policy {
        PathPolicy::RoundRobin => candidates.take(1).next(),
        PathPolicy::QueueDepth => candidates.min_by_key(|&path| loads[path].bytes),
    }
    .unwrap_or(0)
}

/// Every path (index, address) a lane whose home is `home` tries, in order: its home
/// first, then the others after it (wrapping), so lanes of different homes spread over
/// the survivors when more than two paths exist.
pub(crate) fn reconnect_order(paths: Vec<String>, home: usize) -> Vec<(usize, String)> {
    let mut order: Vec<(usize, String)> = paths.into_iter().enumerate().collect();
    let first = home.min(order.len().saturating_sub(1));
    order.rotate_left(first);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(usable: bool, bytes: u64) -> PathLoad {
        PathLoad { usable, bytes }
    }

    #[test]
    fn queue_depth_takes_the_least_loaded_path() {
        let loads = [load(true, 1 << 20), load(true, 4096)];
        assert_eq!(choose(PathPolicy::QueueDepth, &loads, 1), 1);
        assert_eq!(choose(PathPolicy::QueueDepth, &loads, 0), 1);
    }

    #[test]
    fn queue_depth_ties_alternate() {
        let loads = [load(true, 0), load(true, 0), load(true, 0)];
        assert_eq!(choose(PathPolicy::QueueDepth, &loads, 0), 1);
        assert_eq!(choose(PathPolicy::QueueDepth, &loads, 1), 2);
        assert_eq!(choose(PathPolicy::QueueDepth, &loads, 2), 0);
    }

    #[test]
    fn a_path_without_lanes_up_is_skipped_even_if_idle() {
        let loads = [load(false, 0), load(true, 8 << 20)];
        for last in 0..2 {
            assert_eq!(choose(PathPolicy::QueueDepth, &loads, last), 1);
            assert_eq!(choose(PathPolicy::RoundRobin, &loads, last), 1);
        }
    }

    #[test]
    fn with_no_path_usable_every_path_is_a_candidate() {
        let loads = [load(false, 100), load(false, 0)];
        assert_eq!(choose(PathPolicy::QueueDepth, &loads, 1), 1);
        assert_eq!(choose(PathPolicy::RoundRobin, &loads, 1), 0);
    }

    #[test]
    fn round_robin_rotates_regardless_of_load() {
        let loads = [load(true, 0), load(true, 1 << 30)];
        assert_eq!(choose(PathPolicy::RoundRobin, &loads, 0), 1);
        assert_eq!(choose(PathPolicy::RoundRobin, &loads, 1), 0);
    }

    #[test]
    fn a_silent_path_stops_getting_work_as_its_bytes_pile_up() {
        // Path 0 went silent: what it was sent stays outstanding; path 1 drains.
        let mut loads = [load(true, 0), load(true, 0)];
        let mut last = 1;
        let mut sent = [0u32; 2];
        for _ in 0..100 {
            let path = choose(PathPolicy::QueueDepth, &loads, last);
            sent[path] += 1;
            if path == 0 {
                loads[0].bytes += 4096;
            }
            last = path;
        }
        assert_eq!(sent[0], 1, "one request strands on the silent path");
    }

    #[test]
    fn a_lane_tries_its_home_first_then_the_others() {
        let paths = || vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let order = |home| {
            reconnect_order(paths(), home)
                .into_iter()
                .map(|(index, _)| index)
                .collect::<Vec<_>>()
        };
        assert_eq!(order(0), vec![0, 1, 2]);
        assert_eq!(order(1), vec![1, 2, 0]);
        assert_eq!(order(2), vec![2, 0, 1]);
        assert_eq!(reconnect_order(paths(), 1)[0], (1, "b".to_string()));
        assert_eq!(
            reconnect_order(vec!["a".into()], 0),
            vec![(0, "a".to_string())]
        );
    }

    #[test]
    fn policies_parse() {
        assert_eq!("queue-depth".parse(), Ok(PathPolicy::QueueDepth));
        assert_eq!("round-robin".parse(), Ok(PathPolicy::RoundRobin));
        assert!("random".parse::<PathPolicy>().is_err());
    }
}
