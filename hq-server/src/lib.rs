//! hq-server: chainsync at headquarters.
//!
//! # Layout
//! - [`config`]: the data folder (config, keys, certificate, database).
//! - [`admin`]: store add / list / revoke, product add, price set, API tokens.
//! - [`api`]: the HQ API (HTTP, role-scoped tokens).
//! - [`serve`]: the QUIC sync endpoint.
//! - [`demo`]: a whole small chain in one process (`hq-server demo`).

pub mod admin;
pub mod api;
pub mod config;
pub mod demo;
pub mod serve;
