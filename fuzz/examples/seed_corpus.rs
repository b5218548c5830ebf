//! Writes a seed corpus for both fuzz targets: valid frames of every kind, and valid change sets
//! of every op and every rule outcome of the gate (apply, duplicate, fork, gap, prev mismatch,
//! unknown, revoked, not the peer's stream, topic or op not allowed). Random bytes rarely decode as
//! a change set, so starting from these lets the fuzzer work on the rules instead of the decoder.
//!
//! `cargo run --example seed_corpus` (from `fuzz/`) writes `corpus/frame_decode/seed-*` and
//! `corpus/changeset_verify/seed-*`; re-running overwrites the same files.

use chainsync::changeset::{CHANGE_SET_FORMAT, ChangeSet, Op, SignedChangeSet, ZERO_HASH};
use chainsync::hlc::Hlc;
use chainsync::ids::{MemberId, NodeId, RecordId, RegionId, Scope, Sku, StreamId, Topic};
use chainsync::model::{
    ALL_DAYS, Combination, LedgerAccount, LedgerEntry, LedgerKind, MemberEdit, MovementKind,
    Payment, PaymentMethod, PriceEntry, PriceKind, Product, ProfileField, Promotion, PromotionRule,
    Receipt, ReceiptLine, Region, ReturnRecord, StockMovement, StoreInfo, StoreMode, Void,
};
use chainsync::protocol::encode_frame;
use chainsync::protocol::frame::{ErrorCode, Frame, WireChangeSet, WireCursor};
use chainsync::validate::{self, Verdict};
use chainsync_fuzz::{HEAD_HASH, HEAD_SEQ, MemFacts, join_input, key, known_key, sign_body};
use std::error::Error;
use std::path::Path;

type Res<T> = Result<T, Box<dyn Error>>;

fn node(s: &str) -> Res<NodeId> {
    Ok(NodeId::new(s)?)
}
fn rec(s: &str) -> Res<RecordId> {
    Ok(RecordId::new(s)?)
}
fn sku(s: &str) -> Res<Sku> {
    Ok(Sku::new(s)?)
}

/// A change set of `origin/topic`, signed with the origin's key (or a stranger's).
fn change_set(
    origin: &str,
    topic: Topic,
    seq: u64,
    prev: [u8; 32],
    ops: Vec<Op>,
) -> Res<SignedChangeSet> {
    let origin = node(origin)?;
    let cs = ChangeSet {
        format: CHANGE_SET_FORMAT,
        stream: StreamId::new(origin.clone(), topic),
        seq,
        prev,
        hlc: Hlc {
            wall_ms: 1_700_000_000_000,
            logical: 0,
        },
        ops,
    };
    let k = known_key(&origin).unwrap_or_else(|| key(origin.as_str()));
    Ok(SignedChangeSet::sign(&cs, &k)?)
}

fn receipt(store: &str, n: u32) -> Res<Op> {
    let lines = vec![ReceiptLine::plain(sku("A1")?, 2, 150)];
    Ok(Op::Receipt(Receipt {
        id: rec(&format!("{store}-{n}"))?,
        store: node(store)?,
        sold_at_ms: 1_700_000_000_000,
        member: Some(MemberId::new("M1")?),
        lines,
        payments: vec![Payment {
            method: PaymentMethod::Card,
            amount_cents: 300,
        }],
        pricing: chainsync::model::PricingBasis::unknown(1_700_000_000_000),
    }))
}

/// A sales change set of `origin` holding one receipt of `store` (normally the origin itself).
fn sale(origin: &str, seq: u64, prev: [u8; 32], store: &str, n: u32) -> Res<SignedChangeSet> {
    change_set(origin, Topic::Sales, seq, prev, vec![receipt(store, n)?])
}

/// Change sets covering every op and every outcome of the gate against `MemFacts`.
fn change_sets() -> Res<Vec<SignedChangeSet>> {
    let next = HEAD_SEQ + 1;
    let s1_store = Scope::Store(node("S001")?);
    let mut out = vec![
        // Applies: S001/sales at head + 1, chained.
        sale("S001", next, HEAD_HASH, "S001", 1)?,
        // Duplicate (seq 1 unknown), fork (seq 2 and 3 have other hashes), gap, prev mismatch.
        sale("S001", 1, ZERO_HASH, "S001", 1)?,
        sale("S001", 2, ZERO_HASH, "S001", 2)?,
        sale("S001", HEAD_SEQ, ZERO_HASH, "S001", 3)?,
        sale("S001", next + 2, HEAD_HASH, "S001", 4)?,
        sale("S001", next, ZERO_HASH, "S001", 5)?,
        // Revoked and unknown origins; a receipt naming another store.
        sale("S002", 1, ZERO_HASH, "S002", 1)?,
        sale("S009", 1, ZERO_HASH, "S009", 1)?,
        sale("S001", next, HEAD_HASH, "S002", 1)?,
        // Returns and voids.
        change_set(
            "S001",
            Topic::Sales,
            next,
            HEAD_HASH,
            vec![
                Op::Return(ReturnRecord {
                    id: rec("S001-R1")?,
                    store: node("S001")?,
                    original: rec("S005-9")?,
                    at_ms: 5,
                    lines: vec![ReceiptLine::plain(sku("A1")?, 1, 100)],
                    refunds: vec![Payment {
                        method: PaymentMethod::Cash,
                        amount_cents: 100,
                    }],
                    unverified: true,
                }),
                Op::Void(Void {
                    id: rec("S001-V1")?,
                    store: node("S001")?,
                    original: rec("S001-1")?,
                    at_ms: 6,
                    reason: "mistake".into(),
                }),
            ],
        )?,
        // HQ's directory: a region, a store with a good key and one with a key off the curve.
        change_set(
            "hq",
            Topic::Directory,
            next,
            HEAD_HASH,
            vec![
                Op::RegionUpsert(Region {
                    id: RegionId::new("north")?,
                    name: "North".into(),
                    parent: None,
                }),
                Op::StoreUpsert(StoreInfo {
                    id: node("S003")?,
                    name: "Store 3".into(),
                    region: RegionId::new("north")?,
                    mode: StoreMode::Batch,
                    public_key: key("S003").verifying_key().to_bytes(),
                    may_set_own_prices: true,
                    revoked: false,
                    retired_keys: vec![],
                    time_zone: "Europe/Paris".into(),
                }),
                Op::StoreUpsert(StoreInfo {
                    id: node("S004")?,
                    name: "Store 4".into(),
                    region: RegionId::new("north")?,
                    mode: StoreMode::Hosted,
                    public_key: [0xff; 32],
                    may_set_own_prices: false,
                    revoked: true,
                    retired_keys: vec![],
                    time_zone: "UTC".into(),
                }),
            ],
        )?,
        // A store writing HQ's directory.
        change_set(
            "S001",
            Topic::Directory,
            1,
            ZERO_HASH,
            vec![Op::RegionUpsert(Region {
                id: RegionId::new("south")?,
                name: "South".into(),
                parent: None,
            })],
        )?,
        change_set(
            "hq",
            Topic::Catalog,
            1,
            ZERO_HASH,
            vec![Op::ProductUpsert(Product {
                sku: sku("A1")?,
                name: "Apple".into(),
                category: "fruit".into(),
                barcodes: vec!["4006381333931".into()],
                unit_cost_cents: 40,
                active: true,
            })],
        )?,
        // Prices: a store's own scope, HQ's chain scope, a removal, a scope mismatch.
        change_set(
            "S001",
            Topic::Prices(s1_store.clone()),
            1,
            ZERO_HASH,
            vec![
                Op::PriceUpsert(PriceEntry {
                    id: rec("S001-P1")?,
                    sku: sku("A1")?,
                    scope: s1_store.clone(),
                    kind: PriceKind::Retail,
                    price_cents: 120,
                    effective_from_ms: 0,
                    effective_to_ms: Some(10),
                }),
                Op::PriceRemove {
                    id: rec("S001-P0")?,
                },
            ],
        )?,
        change_set(
            "hq",
            Topic::Prices(Scope::Chain),
            1,
            ZERO_HASH,
            vec![Op::PriceUpsert(PriceEntry {
                id: rec("hq-P1")?,
                sku: sku("A1")?,
                scope: Scope::Region(RegionId::new("north")?),
                kind: PriceKind::Member,
                price_cents: 99,
                effective_from_ms: 0,
                effective_to_ms: None,
            })],
        )?,
        change_set(
            "hq",
            Topic::Promotions(Scope::Chain),
            1,
            ZERO_HASH,
            vec![
                Op::PromotionUpsert(Promotion {
                    id: rec("hq-PR1")?,
                    name: "Two for one".into(),
                    scope: Scope::Chain,
                    rule: PromotionRule::BuyNGetM {
                        buy: 1,
                        get: 1,
                        across_skus: false,
                    },
                    skus: vec![sku("A1")?],
                    categories: vec![],
                    mode: Combination::BestPrice,
                    priority: 0,
                    member_only: true,
                    member_levels: vec![],
                    birthday_only: false,
                    starts_at_ms: 0,
                    ends_at_ms: Some(100),
                    local_dates: None,
                    days_of_week: ALL_DAYS,
                    hours: Some((9, 17)),
                    max_units_per_receipt: Some(4),
                    allocations: vec![],
                }),
                Op::PromotionRemove { id: rec("hq-PR0")? },
            ],
        )?,
        // Members: an edit, a store setting the offline allowance (refused), a ledger entry.
        change_set(
            "S001",
            Topic::Members,
            1,
            ZERO_HASH,
            vec![
                Op::MemberEdit(MemberEdit {
                    member: MemberId::new("M1")?,
                    hlc: Hlc::default(),
                    fields: vec![(ProfileField::Name, "Ada".into())],
                }),
                Op::Ledger(LedgerEntry {
                    id: rec("S001-L1")?,
                    member: MemberId::new("M1")?,
                    account: LedgerAccount::StoredValue,
                    kind: LedgerKind::ToppedUp,
                    amount: 500,
                    receipt: Some(rec("S001-1")?),
                    at_ms: 1,
                    auth: None,
                    tender: Some(chainsync::model::PaymentMethod::Cash),
                    note: String::new(),
                }),
                Op::MemberAllowance {
                    member: MemberId::new("M1")?,
                    allowance: Some(chainsync::model::Allowance {
                        stored_value_cents: 1000,
                        points: 0,
                    }),
                },
            ],
        )?,
        // Inventory: the store's own movement and one for another store.
        change_set(
            "S001",
            Topic::Inventory,
            1,
            ZERO_HASH,
            vec![
                Op::Stock(StockMovement {
                    id: rec("S001-M1")?,
                    store: node("S001")?,
                    sku: sku("A1")?,
                    kind: MovementKind::Received,
                    qty_delta: 24,
                    reference: "delivery 1".into(),
                    at_ms: 1,
                }),
                Op::Stock(StockMovement {
                    id: rec("S001-M2")?,
                    store: node("S002")?,
                    sku: sku("A1")?,
                    kind: MovementKind::TransferOut,
                    qty_delta: -1,
                    reference: "to S002".into(),
                    at_ms: 2,
                }),
            ],
        )?,
    ];
    // A bad signature on an otherwise applicable change set.
    let mut bad = out[0].clone();
    bad.sig[0] ^= 1;
    out.push(bad);
    // Check that the signatures are what `MemFacts` expects.
    for cs in &out[..1] {
        let k = known_key(&node("S001")?).ok_or("S001 key")?;
        assert_eq!(cs.sig, sign_body(&cs.body, &k));
    }
    Ok(out)
}

fn frames(change_sets: &[SignedChangeSet]) -> Vec<Frame> {
    let cursors = vec![
        WireCursor {
            stream: "hq/directory".into(),
            seq: 3,
        },
        WireCursor {
            stream: "S001/prices@store:S001".into(),
            seq: 0,
        },
    ];
    let wire: Vec<WireChangeSet> = change_sets.iter().map(WireChangeSet::from_signed).collect();
    vec![
        Frame::Hello {
            node: "S001".into(),
            cursors: cursors.clone(),
        },
        Frame::Challenge { nonce: [3; 32] },
        Frame::Auth {
            signature: vec![5; 64],
        },
        Frame::Welcome {
            own_heads: cursors.clone(),
            hq_time_ms: 1_800_000_000_000,
        },
        Frame::Push {
            change_sets: wire[..3].to_vec(),
        },
        Frame::PushAck {
            heads: cursors.clone(),
            rejected: vec!["bad signature on S001/sales seq 4".into()],
        },
        Frame::Pull {
            cursors: cursors.clone(),
            seeding: vec![],
        },
        Frame::Batch {
            snapshot_parts: vec![],
            change_sets: wire,
            more: true,
            hq_time_ms: 1_800_000_000_000,
        },
        Frame::Notify { heads: cursors },
        Frame::Error {
            code: ErrorCode::BadFrame,
            message: "malformed frame".into(),
        },
    ]
}

fn write(dir: &Path, name: String, bytes: &[u8]) -> Res<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), bytes)?;
    Ok(())
}

fn main() -> Res<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let change_sets = change_sets()?;

    let verify_dir = root.join("changeset_verify");
    for (i, cs) in change_sets.iter().enumerate() {
        // What the gate says of each seed, so that a reader can see every rule is reached.
        let Ok(verdict) = validate::validate(cs, None, &MemFacts);
        let verdict = match verdict {
            Ok(Verdict::Apply(cs)) => format!("apply {} seq {}", cs.stream, cs.seq),
            Ok(Verdict::Duplicate { stream, seq }) => format!("duplicate {stream} seq {seq}"),
            Err(e) => format!("refused: {e}"),
        };
        println!("seed-{i:02}: {verdict}");
        // Signed as is (mode 0), re-signed (1), from the peer S001 (2), both (3).
        for mode in 0..4u8 {
            write(
                &verify_dir,
                format!("seed-{i:02}-{mode}"),
                &join_input(mode, cs),
            )?;
        }
    }

    let frame_dir = root.join("frame_decode");
    let mut stream = vec![7u8]; // chunk size selector, then every frame back to back
    for (i, frame) in frames(&change_sets).iter().enumerate() {
        let bytes = encode_frame(frame)?;
        // The payload alone (for decode_payload) and the framed bytes (for the decoder).
        write(&frame_dir, format!("seed-payload-{i:02}"), &bytes[4..])?;
        let mut framed = vec![i as u8];
        framed.extend_from_slice(&bytes);
        write(&frame_dir, format!("seed-framed-{i:02}"), &framed)?;
        stream.extend_from_slice(&bytes);
    }
    write(&frame_dir, "seed-stream".into(), &stream)?;
    println!(
        "wrote {} change-set seeds and {} frame seeds under {}",
        change_sets.len() * 4,
        frames(&change_sets).len() * 2 + 1,
        root.display()
    );
    Ok(())
}
