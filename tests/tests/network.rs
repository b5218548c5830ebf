//! Bad input over the network, against a real `hq-server serve`: a client that is not enrolled
//! and a frame over the size limit each get an `Error` frame naming the problem; HQ keeps serving
//! the enrolled store. And an agent reconnects by itself after HQ restarts.

use chainsync::protocol::frame::{ErrorCode, FRAME_BYTES_MAX, Frame, FrameDecoder, encode_frame};
use chainsync::transport::tls::client_config;
use chainsync_tests::e2e::{Agent, Hq, Proc, wait_until};
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// A QUIC connection to HQ as any client could open it (HQ's certificate is public).
async fn connect_raw(hq: &Hq) -> (quinn::Endpoint, quinn::Connection) {
    let cert = std::fs::read(hq.data.join("hq-cert.der")).unwrap();
    let mut endpoint = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).unwrap();
    endpoint.set_default_client_config(client_config(&cert).unwrap());
    let conn = endpoint
        .connect(hq.addr, chainsync::transport::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    (endpoint, conn)
}

/// HQ with the catalog of [`setup`] and store S001 running and holding it. `quiet`: the store
/// pulls only on notices (its poll every 10 minutes), so a test sees what a notice or a
/// reconnect does.
fn store_in_session(root: &std::path::Path, quiet: bool) -> (Hq, Proc, Agent, Proc) {
    let hq = setup(root);
    let provision = hq.add_store("S001", "north");
    let hq_proc = hq.start();
    let agent = Agent::init(root, "S001", &provision).unwrap();
    if quiet {
        agent.set_poll_interval_ms(600_000);
    }
    let agent_proc = agent.start();
    wait_until(WAIT, "the catalog at the store", || {
        (agent.get("/v1/prices/cola").1["price_cents"] == 129).then_some(())
    });
    (hq, hq_proc, agent, agent_proc)
}

/// The next frame HQ sends on `recv`.
async fn next_frame(decoder: &mut FrameDecoder, recv: &mut quinn::RecvStream) -> Frame {
    loop {
        if let Some(frame) = decoder.next_frame().unwrap() {
            return frame;
        }
        let chunk = tokio::time::timeout(WAIT, recv.read_chunk(65_536, true))
            .await
            .unwrap()
            .unwrap()
            .expect("HQ answers before closing");
        decoder.push(&chunk.bytes).unwrap();
    }
}

/// Opens a session stream to HQ as any client could, sends `bytes`, and returns the first frame
/// HQ answers.
fn first_answer(hq: &Hq, bytes: Vec<u8>) -> Frame {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (_endpoint, conn) = connect_raw(hq).await;
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&bytes).await.unwrap();
        next_frame(&mut FrameDecoder::default(), &mut recv).await
    })
}

fn setup(root: &std::path::Path) -> Hq {
    let hq = Hq::init(root);
    hq.cli_ok(&["product", "add", "--sku", "cola", "--name", "Cola"]);
    hq.cli_ok(&["price", "set", "--sku", "cola", "--price", "1.29"]);
    hq
}

// A stranger and an oversized frame are told why and cut off; the enrolled store keeps syncing.
#[test]
fn unenrolled_clients_and_oversized_frames_are_refused_while_hq_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (hq, _hq_proc, agent, _agent_proc) = store_in_session(dir.path(), false);

    let hello = encode_frame(&Frame::Hello {
        node: "S999".into(),
        cursors: vec![],
    })
    .unwrap();
    match first_answer(&hq, hello) {
        Frame::Error { code, message } => {
            assert_eq!(code, ErrorCode::NotEnrolled);
            assert!(message.contains("S999 is not enrolled"), "{message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let oversized = ((FRAME_BYTES_MAX as u32) + 1).to_be_bytes().to_vec();
    match first_answer(&hq, oversized) {
        Frame::Error { code, message } => {
            assert_eq!(code, ErrorCode::BadFrame);
            assert!(message.contains("over the"), "{message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let garbage = vec![0, 0, 0, 5, 0xde, 0xad, 0xbe, 0xef, 0x00];
    assert!(matches!(first_answer(&hq, garbage), Frame::Error { .. }));

    let (status, body) = agent.send(
        "POST",
        "/v1/sales",
        &json!({ "lines": [{ "sku": "cola", "qty": 1 }] }),
    );
    assert_eq!(status, 201, "{body}");
    let replica = hq.replica();
    wait_until(WAIT, "the sale at HQ", || {
        (replica.receipt_count().unwrap() == 1).then_some(())
    });
}

// HQ goes down and comes back: the agent keeps selling meanwhile, reconnects by itself, and
// delivers what it sold; a price set after the restart reaches it without polling.
#[test]
fn an_agent_reconnects_after_hq_restarts_and_delivers_what_it_sold() {
    let dir = tempfile::tempdir().unwrap();
    let (hq, hq_proc, agent, _agent_proc) = store_in_session(dir.path(), true);

    assert!(hq_proc.terminate());
    wait_until(WAIT, "the agent to notice", || {
        (agent.get("/v1/sync").1["connected"] == false).then_some(())
    });
    let (status, body) = agent.send(
        "POST",
        "/v1/sales",
        &json!({ "lines": [{ "sku": "cola", "qty": 2 }] }),
    );
    assert_eq!(status, 201, "the till works while HQ is down: {body}");

    let _hq = hq.start();
    let replica = hq.replica();
    wait_until(WAIT, "the sale at HQ after reconnecting", || {
        (replica.receipt_count().unwrap() == 1).then_some(())
    });
    hq.cli_ok(&["price", "set", "--sku", "cola", "--price", "1.09"]);
    wait_until(WAIT, "the new price by notification", || {
        (agent.get("/v1/prices/cola").1["price_cents"] == 109).then_some(())
    });
}

// Issue "Sync on real lines", item 2, after a crash: HQ killed with -9 and started again drew a
// new stateless-reset key, so a store whose push was in flight on its old connection ignored
// the new HQ's resets and waited out QUIC's 20 s idle timeout before it dialled again. HQ's
// reset key now comes from its signing key: the restarted HQ resets the old connection at the
// store's next packet and the store reconnects at once. (The bound below is half the idle
// timeout: it tells the two behaviours apart; the time is printed, not asserted.)
#[test]
fn a_store_reconnects_at_once_after_hq_is_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let (hq, hq_proc, agent, _agent_proc) = store_in_session(dir.path(), true);
    hq_proc.kill9();
    let sale = json!({ "lines": [{ "sku": "cola", "qty": 1 }] });
    let (status, body) = agent.send("POST", "/v1/sales", &sale);
    assert_eq!(status, 201, "{body}");
    let _hq = hq.start();
    let restarted = std::time::Instant::now();
    let replica = hq.replica();
    let bound = Duration::from_millis(chainsync::transport::IDLE_TIMEOUT_MS / 2);
    wait_until(
        bound,
        "the sale at HQ before the old connection's idle timeout",
        || (replica.receipt_count().unwrap() == 1).then_some(()),
    );
    println!(
        "sale at HQ {} ms after HQ restarted",
        restarted.elapsed().as_millis()
    );
}

// Issue 10, item 3: a connection that finished its handshake but never opened a session (a
// store cut off right after connecting, or anyone on the network) must not hold HQ's shutdown.
// It used to: HQ waited in `accept_bi` for the idle timeout. HQ now exits as soon as SIGTERM
// arrives (`terminate` gives it 15 s before killing it, and says whether it exited by itself).
#[test]
fn hq_stops_at_once_on_sigterm_even_with_a_connection_that_never_opened_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let hq = setup(dir.path());
    let hq_proc = hq.start();
    let cert = std::fs::read(hq.data.join("hq-cert.der")).unwrap();
    let addr = hq.addr;
    let (connected_tx, connected) = std::sync::mpsc::channel();
    let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
    let client = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let mut endpoint = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).unwrap();
            endpoint.set_default_client_config(client_config(&cert).unwrap());
            let conn = endpoint
                .connect(addr, chainsync::transport::SERVER_NAME)
                .unwrap()
                .await
                .unwrap();
            connected_tx.send(()).unwrap();
            // Hold the connection, opening nothing, until the test is done (60 s at most).
            let _ = tokio::time::timeout(Duration::from_secs(60), done).await;
            drop(conn);
        });
    });
    connected.recv_timeout(WAIT).unwrap();
    let started = std::time::Instant::now();
    let exited_by_itself = hq_proc.terminate();
    let took = started.elapsed();
    println!("hq-server stopped {took:?} after SIGTERM");
    let _ = done_tx.send(());
    client.join().unwrap();
    assert!(
        exited_by_itself,
        "hq-server was still running 15 s after SIGTERM, held by an idle connection"
    );
}

// Issue 10, item 3, the store's side: with HQ down, the agent spends its time in connect
// attempts (each could wait 10 s then; `CONNECT_TIMEOUT_MS` is 3 s now). SIGTERM used to wait
// out the attempt; now the agent stops at once. (A 5 s bound: half the old timeout, far above
// the ~0.1 s it takes.)
#[test]
fn an_agent_stops_at_once_on_sigterm_while_it_tries_to_reach_hq() {
    let dir = tempfile::tempdir().unwrap();
    let (_hq, hq_proc, agent, agent_proc) = store_in_session(dir.path(), false);
    assert!(hq_proc.terminate());
    wait_until(WAIT, "the agent to notice", || {
        (agent.get("/v1/sync").1["connected"] == false).then_some(())
    });
    // Past the first backoff (at most 250 ms): the agent is in a connect attempt now.
    std::thread::sleep(Duration::from_millis(1_500));
    let started = std::time::Instant::now();
    let exited_by_itself = agent_proc.terminate();
    let took = started.elapsed();
    println!("store-agent stopped {took:?} after SIGTERM");
    assert!(
        exited_by_itself,
        "store-agent did not exit within 15 s of SIGTERM"
    );
    assert!(
        took < Duration::from_secs(5),
        "store-agent took {took:?} to stop: it waited out its connect attempt"
    );
}

// Issue "Sync on real lines", item 15: the garbage test sent junk datagrams, which QUIC drops
// before any chainsync code sees them. Here the junk comes from inside a session that
// authenticated as the enrolled store: a push whose change set is random bytes is refused alone
// in the acknowledgement, with the reason; a frame of random bytes ends the session with a
// BadFrame error; HQ holds nothing new and keeps serving the store's own agent.
#[test]
fn garbage_from_an_authenticated_store_is_refused_and_changes_nothing() {
    use chainsync::protocol::frame::WireChangeSet;
    use chainsync::protocol::session::auth_message;
    use ed25519_dalek::Signer;

    let dir = tempfile::tempdir().unwrap();
    let (hq, _hq_proc, agent, _agent_proc) = store_in_session(dir.path(), false);
    let key = chainsync::transport::keyfile::read_key(&agent.data.join("store.key")).unwrap();
    let replica = hq.replica();
    let heads_before = replica.heads().unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (ack, error) = runtime.block_on(async {
        let (_endpoint, conn) = connect_raw(&hq).await;
        let binding = chainsync::transport::tls::tls_binding(&conn).unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let mut decoder = FrameDecoder::default();
        let mut next = async |recv: &mut quinn::RecvStream| next_frame(&mut decoder, recv).await;
        let hello = Frame::Hello {
            node: "S001".into(),
            cursors: vec![],
        };
        send.write_all(&encode_frame(&hello).unwrap())
            .await
            .unwrap();
        let Frame::Challenge { nonce } = next(&mut recv).await else {
            panic!("no challenge")
        };
        let signature = key
            .sign(&auth_message(&nonce, &binding))
            .to_bytes()
            .to_vec();
        send.write_all(&encode_frame(&Frame::Auth { signature }).unwrap())
            .await
            .unwrap();
        assert!(matches!(next(&mut recv).await, Frame::Welcome { .. }));
        let junk: Vec<u8> = (0..300u32).map(|b| (b * 31 + 7) as u8).collect();
        let push = Frame::Push {
            change_sets: vec![WireChangeSet {
                body: junk.clone(),
                sig: junk[..64].to_vec(),
            }],
        };
        send.write_all(&encode_frame(&push).unwrap()).await.unwrap();
        let ack = next(&mut recv).await;
        // A frame whose length and protocol version are right and whose frame is random.
        let mut payload = vec![chainsync::protocol::frame::PROTOCOL_VERSION as u8, 0xff];
        payload.extend_from_slice(&junk);
        let mut garbage = (payload.len() as u32).to_be_bytes().to_vec();
        garbage.extend_from_slice(&payload);
        send.write_all(&garbage).await.unwrap();
        let error = next(&mut recv).await;
        (ack, error)
    });
    match ack {
        Frame::PushAck { rejected, .. } => {
            assert_eq!(rejected.len(), 1, "{rejected:?}");
            assert!(!rejected[0].is_empty());
        }
        other => panic!("expected a PushAck, got {other:?}"),
    }
    match error {
        Frame::Error { code, message } => {
            assert_eq!(code, ErrorCode::BadFrame, "{message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(replica.heads().unwrap(), heads_before, "nothing written");
    // HQ's metrics count the refusal by its kind.
    let (_, text) = chainsync_tests::e2e::http_text(hq.api, "GET", "/metrics", None, None).unwrap();
    let series = r#"chainsync_rejected_change_sets_total{reason="malformed"}"#;
    assert_eq!(
        chainsync_tests::e2e::sample(&text, series),
        Some(1.0),
        "{text}"
    );
    let (status, body) = agent.send(
        "POST",
        "/v1/sales",
        &json!({ "lines": [{ "sku": "cola", "qty": 1 }] }),
    );
    assert_eq!(status, 201, "{body}");
    wait_until(WAIT, "the agent's sale at HQ", || {
        (replica.receipt_count().unwrap() == 1).then_some(())
    });
}

// Issue "Sync on real lines", item 9: before authentication HQ gave a connection unlimited
// time, read frames of up to 4 MiB and counted it among the 8,192 slots of its stores. Now a
// connection that does not authenticate within 10 s is closed (its keep-alives do not keep it),
// a frame over 1 MiB before authentication is refused, and at most 256 connections may be
// authenticating at once, apart from the stores' slots.
#[test]
fn a_connection_that_does_not_authenticate_is_bounded_in_time_and_bytes() {
    use chainsync::transport::hub::{AUTHENTICATION_TIMEOUT_MS, UNAUTHENTICATED_FRAME_BYTES_MAX};
    let dir = tempfile::tempdir().unwrap();
    let hq = setup(dir.path());
    let _hq = hq.start();

    let over = ((UNAUTHENTICATED_FRAME_BYTES_MAX as u32) + 1)
        .to_be_bytes()
        .to_vec();
    match first_answer(&hq, over) {
        Frame::Error { code, message } => {
            assert_eq!(code, ErrorCode::BadFrame);
            assert!(
                message.contains(&UNAUTHENTICATED_FRAME_BYTES_MAX.to_string()),
                "{message}"
            );
        }
        other => panic!("expected an error, got {other:?}"),
    }

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let closed = runtime.block_on(async {
        let (_endpoint, conn) = connect_raw(&hq).await;
        // Connected, and then nothing: no session stream, no Hello.
        tokio::time::timeout(
            Duration::from_millis(2 * AUTHENTICATION_TIMEOUT_MS),
            conn.closed(),
        )
        .await
    });
    match closed {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => {
            assert_eq!(&close.reason[..], b"not authenticated in time")
        }
        other => panic!("HQ kept a silent connection open: {other:?}"),
    }
}

// Issue "Sync on real lines", item 9, the count: while 256 connections sit unauthenticated the
// next one is refused, a store already in session keeps selling through HQ meanwhile, and once
// they are gone HQ takes new connections again.
#[test]
fn at_most_256_connections_authenticate_at_once_and_sessions_carry_on() {
    use chainsync::transport::hub::UNAUTHENTICATED_MAX;
    let dir = tempfile::tempdir().unwrap();
    let (hq, _hq_proc, agent, _agent_proc) = store_in_session(dir.path(), false);
    let replica = hq.replica();
    let cert = std::fs::read(hq.data.join("hq-cert.der")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = runtime.enter();
    let mut endpoint = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).unwrap();
    endpoint.set_default_client_config(client_config(&cert).unwrap());
    let connect = |endpoint: &quinn::Endpoint| {
        let connecting = endpoint
            .connect(hq.addr, chainsync::transport::SERVER_NAME)
            .unwrap();
        runtime.block_on(async { tokio::time::timeout(WAIT, connecting).await.unwrap() })
    };
    // Each holds HQ's place for at most 10 s (the authentication timeout): open them together.
    let silent: Vec<quinn::Connection> = runtime.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..UNAUTHENTICATED_MAX {
            let connecting = endpoint
                .connect(hq.addr, chainsync::transport::SERVER_NAME)
                .unwrap();
            set.spawn(async move { tokio::time::timeout(WAIT, connecting).await });
        }
        let mut out = Vec::new();
        while let Some(done) = set.join_next().await {
            out.push(done.unwrap().unwrap().unwrap());
        }
        out
    });
    match connect(&endpoint) {
        Err(quinn::ConnectionError::ConnectionClosed(close)) => {
            assert_eq!(
                close.error_code,
                quinn::TransportErrorCode::CONNECTION_REFUSED
            )
        }
        other => panic!("HQ took connection {}: {other:?}", UNAUTHENTICATED_MAX + 1),
    }
    let (status, body) = agent.send(
        "POST",
        "/v1/sales",
        &json!({ "lines": [{ "sku": "cola", "qty": 1 }] }),
    );
    assert_eq!(status, 201, "{body}");
    wait_until(WAIT, "the sale at HQ meanwhile", || {
        (replica.receipt_count().unwrap() == 1).then_some(())
    });
    for conn in &silent {
        conn.close(0u32.into(), b"done");
    }
    drop(silent);
    wait_until(WAIT, "HQ to take a new connection", || {
        connect(&endpoint).ok()
    });
}
