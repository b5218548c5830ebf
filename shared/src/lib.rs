//! chainsync: the replication core shared by `hq-server` and `store-agent`.
//!
//! # Layout
//! - [`ids`]: identifiers of the domain and of streams (`S017/sales`).
//! - [`hlc`]: the hybrid logical clock.
//! - [`hqclock`]: HQ's clock as a store reckons it, for pricing.
//! - [`model`]: the retail model (stores, products, prices, promotions, members, ledger, stock,
//!   receipts).
//! - [`changeset`]: change sets, signing and the per-stream hash chain; snapshots.
//! - [`validate`]: the one gate every change set and snapshot passes before it is applied.
//! - [`merge`]: the merge rules as pure functions.
//! - [`checkout`]: the checkout engine: prices, promotions and their combination, pure.
//! - [`lookup`]: the facts a till needs about skus and members, from a replica or from HQ.
//! - [`returns`]: returns checked against the original receipt, pure.
//! - [`replica`]: the SQLite replica (log, cursors, outbox, materialized tables).
//! - [`protocol`]: the wire frames, the frame codec and the sans-IO session state machines.
//! - [`bundle`]: bundle files carrying change sets by hand, for stores without a network.
//!
//! Nothing in this crate opens a socket, reads the wall clock or draws OS randomness: callers pass
//! time (`now_ms`) and nonces in. That is what lets the simulation run a whole chain in one
//! process, deterministically from a seed.

pub mod bundle;
pub mod changeset;
pub mod checkout;
pub mod hlc;
pub mod hqclock;
pub mod ids;
pub mod lookup;
pub mod loyalty;
pub mod merge;
pub mod model;
pub mod pricecheck;
pub mod protocol;
pub mod replica;
pub mod returns;
pub mod transport;
pub mod validate;
