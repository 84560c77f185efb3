//! Drivers of the engine. Each turns a packet source into `Engine::handle`
//! calls and reports what happened; none adds packet logic of its own.
//!
//! Today: [`replay`], offline captures with their own timestamps.

pub mod replay;
