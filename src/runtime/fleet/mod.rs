//! FLEET: hosts that share bans and catch sweeps across hosts through NATS
//! JetStream (`[fleet]`).

pub mod message;
pub mod sweep;
