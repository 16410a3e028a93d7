//! The kernel side: a libublk device whose queue threads run the request engine.
