//! The QUIC adapter both binaries use: it moves frames between quinn streams and the sans-IO
//! session state machines, and nothing more. No protocol decision is made here.
//!
//! # Layout
//! - `tls.rs`: HQ's certificate, server and client configs (the agent pins HQ's certificate).
//! - `actor.rs`: the replica on its own thread behind a bounded queue.
//! - `folders.rs`: bundle folders (watched inbox, processed, rejected, outbox).
//! - `hub.rs`: HQ's endpoint: accept, one task per store connection, notifications fan-out,
//!   graceful shutdown.
//! - `process.rs`: logging set-up, stop signals, whole-file writes (both binaries' edges).
//! - `leaf.rs`: the agent's side: enrollment, and the realtime connection with reconnect.
//!
//! Invariants: this is the only module of `chainsync` that touches sockets, the wall clock or OS
//! randomness; every read is bounded by the frame codec's limit; a misbehaving peer ends only its
//! own connection, with an `Error` frame and a log line.

pub mod actor;
pub mod backups;
pub mod folders;
pub mod hub;
pub mod keyfile;
pub mod leaf;
pub mod metrics;
pub mod process;
pub mod provision;
pub mod tls;

use crate::protocol::frame::{Frame, FrameDecoder, FrameError, encode_frame};
use crate::protocol::session::SessionError;
use std::time::{SystemTime, UNIX_EPOCH};

/// ALPN protocol id: a peer that speaks anything else fails the TLS handshake.
pub const ALPN: &[u8] = b"chainsync/1";
/// The name HQ's certificate carries and agents ask for.
pub const SERVER_NAME: &str = "chainsync-hq";
/// Keep-alive interval: well under typical NAT UDP timeouts (30 s and up).
pub const KEEP_ALIVE_MS: u64 = 5_000;
/// A connection silent this long is dead (keep-alives make silence mean a lost peer).
pub const IDLE_TIMEOUT_MS: u64 = 20_000;
/// Most store connections HQ serves at once; more are refused and retry later.
pub const CONNECTIONS_MAX: usize = 8_192;
/// Bytes read from a QUIC stream at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// What can go wrong moving frames.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("tls: {0}")]
    Tls(String),
    #[error("cannot connect to HQ at {addr}: {reason}")]
    Connect {
        addr: std::net::SocketAddr,
        reason: String,
    },
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("stream: {0}")]
    Write(#[from] quinn::WriteError),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("the replica thread has stopped")]
    ReplicaGone,
    #[error("replica: {0}")]
    Replica(String),
    #[error("the peer closed the stream")]
    Closed,
}

/// Resolves once `shutdown` holds `true` (or its sender is gone).
pub async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    // An error means the sender was dropped: nobody can ask to stop any more, so stop.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Reads until one frame is complete; `None` when the peer finished the stream cleanly.
pub(crate) async fn read_frame(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
) -> Result<Option<Frame>, TransportError> {
    loop {
        if let Some(frame) = decoder.next_frame()? {
            return Ok(Some(frame));
        }
        match recv.read_chunk(READ_CHUNK_BYTES, true).await? {
            Some(chunk) => decoder.push(&chunk.bytes)?,
            None => {
                decoder.finish()?;
                return Ok(None);
            }
        }
    }
}

/// Writes frames in order.
pub(crate) async fn write_frames(
    send: &mut quinn::SendStream,
    frames: &[Frame],
) -> Result<(), TransportError> {
    for frame in frames {
        send.write_all(&encode_frame(frame)?).await?;
    }
    Ok(())
}

/// Writes frames in order, in the protocol version the peer speaks.
pub(crate) async fn write_frames_as(
    send: &mut quinn::SendStream,
    frames: &[Frame],
    version: u16,
) -> Result<(), TransportError> {
    for frame in frames {
        send.write_all(&crate::protocol::frame::encode_frame_as(frame, version)?)
            .await?;
    }
    Ok(())
}
