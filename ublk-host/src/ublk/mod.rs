//! The kernel side: a libublk device whose queue threads run the request engine.
//!
//! - [`params`]: device parameters from the partition (sizes, cache, read-only, discard).
//! - [`queue`]: one hardware queue: a task per tag, the queue's own lanes, one io_uring.
//! - [`device`]: attach (create + serve + remove), detach, list, signals, mount namespace.

pub mod device;
pub mod params;
pub mod queue;

pub use device::{attach, detach, list, AttachOptions, Attached};
