//! store-agent: chainsync at the store.
//!
//! # Layout
//! - [`config`]: the data folder (config, key, database).
//! - [`run`]: the agent service: the realtime link to HQ.

pub mod config;
pub mod run;
