//! Progress of a wait the user sits through (a takeover waiting for the driver to quiesce
//! the device, a detach waiting for the daemon), shown on a terminal only: one line
//! rewritten in place on stderr, about once a second. Redirected output (a log, the
//! journal) gets nothing from here.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the line is rewritten.
const EVERY: Duration = Duration::from_secs(1);

/// One wait's progress line.
#[derive(Debug)]
pub struct Progress {
    what: String,
    started: Instant,
    shown: Option<Instant>,
    terminal: bool,
}

impl Progress {
    /// Starts a wait described as `what` ("waiting for /dev/ublkb0 to quiesce").
    pub fn new(what: impl Into<String>) -> Progress {
        Progress {
            what: what.into(),
            started: Instant::now(),
            shown: None,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// Call on every poll: shows the elapsed time once the wait has lasted a second.
    pub fn tick(&mut self) {
        let now = Instant::now();
        let due = self
            .shown
            .map_or(self.started + EVERY, |shown| shown + EVERY);
        if !self.terminal || now < due {
            return;
        }
        self.shown = Some(now);
        let secs = now.duration_since(self.started).as_secs();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{}... {secs} s", self.what);
        let _ = err.flush();
    }
}

impl Drop for Progress {
    /// Ends the line if one was shown.
    fn drop(&mut self) {
        if self.shown.is_some() {
            let _ = writeln!(std::io::stderr().lock());
        }
    }
}
