//! store-agent: chainsync at the store.
//!
//! # Layout
//! - [`config`]: the data folder (config, key, database).
//! - [`pos`]: the POS API (HTTP on loopback).
//! - [`run`]: the agent service: POS API and the realtime link to HQ.

pub mod config;
pub mod pos;
pub mod run;
