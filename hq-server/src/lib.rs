//! hq-server: chainsync at headquarters.
//!
//! # Layout
//! - [`demo`]: a whole small chain in one process (`hq-server demo`).
//!
//! The sync endpoint over QUIC, the HQ API and the CLI for stores and prices build on the
//! `chainsync` crate and arrive with the network work (see ARCHITECTURE.md).

pub mod demo;
