//! Progress of long operations on a terminal: one line on stderr, rewritten in place, and
//! only when stderr is a terminal (a script or a journal gets the final messages only).

use std::io::{IsTerminal, Write};

/// A progress line on stderr.
#[derive(Debug)]
pub struct Progress {
    shown: bool,
    enabled: bool,
}

impl Progress {
    /// A progress line, shown only if stderr is a terminal.
    pub fn on_terminal() -> Progress {
        Progress {
            shown: false,
            enabled: std::io::stderr().is_terminal(),
        }
    }

    /// Shows `text` in place of the previous line.
    pub fn show(&mut self, text: &str) {
        if !self.enabled {
            return;
        }
        let mut err = std::io::stderr().lock();
        // Progress is best effort: a closed terminal must not fail the operation.
        let _ = write!(err, "\r\x1b[2K{text}");
        let _ = err.flush();
        self.shown = true;
    }

    /// Clears the line, so the next message starts on a clean one.
    pub fn finish(&mut self) {
        if self.shown {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
            self.shown = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
