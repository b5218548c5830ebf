//! hq-server: chainsync at headquarters.
//!
//! # Layout
//! - [`config`]: the data folder (config, keys, certificate, database).
//! - [`admin`]: store add / list / revoke, product add, price set, promotions, API tokens.
//! - [`api`]: the HQ API (HTTP, role-scoped tokens).
//! - [`loyalty`]: the loyalty policy, card allowances, adjustments, statements, exceptions.
//! - [`promo`]: promotions as HQ staff describe them (CLI and API), rules as data.
//! - [`csvio`]: CSV import of products and prices, export of stock.
//! - [`serve`]: the QUIC sync endpoint.
//! - [`demo`]: a whole small chain in one process (`hq-server demo`).

pub mod admin;
pub mod api;
pub mod config;
pub mod csvio;
pub mod demo;
pub mod loyalty;
pub mod promo;
pub mod serve;
