//! Benchmark: how fast HQ applies store sales, against plain SQLite and against signature checks.
//!
//! Run: `cargo bench -p chainsync-tests --bench apply` (a readable table, then one JSON line), or
//! `cargo bench -p chainsync-tests --bench apply -- --json` (only the JSON line on stdout).
//!
//! What it measures, in one run, on real SQLite files in a temporary folder:
//!
//! 1. **Applied** (`receipts_per_s_r1`, `receipts_per_s_r32`, `lines_per_s_*`): 50 stores each
//!    commit receipts of 3 lines to their own replica with `commit_local(Topic::Sales, ..)`, R
//!    receipts per change set. HQ (a fresh replica, `Durability::Full`, i.e. WAL +
//!    `synchronous=FULL`) then applies all of it with `apply_batch(batch, Some(&store), now)`, in
//!    batches of up to 512 change sets, the stores interleaved batch by batch as HQ would see
//!    their pushes. Only HQ's apply is timed (signature check, hash chain, log row, receipt and
//!    line rows, stock, head: everything a real push costs), not the stores' preparation.
//!    R = 1 is the realtime case (one receipt per change set), R = 32 a backlog.
//!    Two small extra cases: `r1_batch1` (every push one change set of one receipt, so one
//!    durable commit per receipt: what HQ pays if it commits each realtime push on its own) and
//!    `r32_10k_voids` (R = 32 while HQ already holds 10,000 voids, applied untimed first).
//! 2. **Plain** (`plain_receipts_per_s_r*`, `plain_rows_per_s_r*`): the same receipt and line rows
//!    (same columns, `WITHOUT ROWID`, same index as `replica/schema.sql`, WAL +
//!    `synchronous=FULL`) inserted with prepared statements into a fresh file, one transaction
//!    per apply batch (512 × R receipts of one store), the floor of what SQLite itself costs.
//!    `ratio_r*` = applied receipts/s ÷ plain receipts/s of the same grouping;
//!    `plain_receipts_per_s` is the R = 1 grouping (512 receipts per transaction).
//! 3. **Verify** (`verify_per_s`, `batch_verify_per_s`): ed25519 checks of 20,000 of those change
//!    sets, one thread: `SignedChangeSet::verify_signature` one by one, and
//!    `ed25519_dalek::verify_batch` in groups of 512.
//! 4. **Split** (`split_r1_*_us`): for the R = 1 change sets, microseconds per change set spent in
//!    the pieces of the gate measured on their own (decode, directory key decompression,
//!    signature, blake3), and what is left for SQLite and the rest of the apply.
//!
//! Reading it: higher is better for every `_per_s`. Targets (noted, not asserted): at least
//! 30,000 receipts/s applied durably, and at least half the plain-insert rate. With one receipt per
//! change set every receipt pays one signature check, so `verify_per_s` bounds
//! `receipts_per_s_r1` from above on one thread.
//!
//! Correctness is checked as it goes, so a broken apply cannot print a good figure: every batch
//! must apply whole (nothing rejected, nothing a duplicate), and HQ's `receipt_count()` must end
//! equal to the number of receipts sent; the plain file's row counts are checked the same way.

use chainsync::changeset::{CHANGE_SET_SIG_PREFIX, Op, SignedChangeSet};
use chainsync::ids::{NodeId, RecordId, Topic};
use chainsync::model::{Receipt, Void};
use chainsync::protocol::frame::BATCH_CHANGE_SETS_MAX;
use chainsync::replica::Durability;
use chainsync::validate;
use chainsync_tests::{Chain, key_for, receipt};
use ed25519_dalek::{Signature, VerifyingKey};
use rusqlite::{Connection, params};
use std::path::Path;
use std::time::{Duration, Instant};

/// Stores pushing to HQ.
const STORES: usize = 50;
/// Regions the stores are spread over (only the directory sees them).
const REGIONS: usize = 5;
/// Lines per receipt.
const LINES: usize = 3;
/// Distinct skus the lines draw from (HQ keeps one stock row per store and sku).
const SKUS: u64 = 2_000;
/// Change sets verified in the signature section.
const VERIFY_COUNT: usize = 20_000;
/// A fixed "now" so that runs repeat.
const NOW_MS: u64 = 1_700_000_000_000;

/// One measured case.
struct Case {
    /// Names the case in the table and suffixes its JSON keys (`receipts_per_s_<label>`).
    label: &'static str,
    /// R: receipts per change set.
    receipts_per_cs: usize,
    /// Change sets of receipts from each store.
    cs_per_store: usize,
    /// Most change sets per `apply_batch` (512, the protocol's batch limit, unless a case says).
    batch_max: usize,
    /// Voids each store sends (and HQ applies, untimed) before its receipts, so that HQ already
    /// holds a history of voids when the timed receipts arrive.
    voids_per_store: usize,
}

/// What a case prepared: for each store its id, its receipts in order, the signed change sets
/// of those receipts, and the change sets of voids that precede them in the stream.
struct Prepared {
    stores: Vec<NodeId>,
    receipts: Vec<Vec<Receipt>>,
    change_sets: Vec<Vec<SignedChangeSet>>,
    void_change_sets: Vec<Vec<SignedChangeSet>>,
}

/// One apply batch: change sets `start..end` of store number `store`.
struct BatchPlan {
    store: usize,
    start: usize,
    end: usize,
}

/// Figures of one case.
struct CaseResult {
    label: &'static str,
    receipts_per_cs: usize,
    batch_max: usize,
    voids: usize,
    receipts: usize,
    change_sets: usize,
    batches: usize,
    apply: Duration,
    plain: Duration,
}

impl CaseResult {
    fn applied_receipts_per_s(&self) -> f64 {
        per_s(self.receipts, self.apply)
    }
    fn applied_lines_per_s(&self) -> f64 {
        per_s(self.receipts * LINES, self.apply)
    }
    fn plain_receipts_per_s(&self) -> f64 {
        per_s(self.receipts, self.plain)
    }
    fn plain_rows_per_s(&self) -> f64 {
        per_s(self.receipts * (1 + LINES), self.plain)
    }
    fn ratio(&self) -> f64 {
        self.applied_receipts_per_s() / self.plain_receipts_per_s()
    }
}

fn per_s(count: usize, took: Duration) -> f64 {
    count as f64 / took.as_secs_f64().max(1e-9)
}

/// Receipt number `n` (from 1) of `store`: 3 lines over the sku range, deterministic.
fn make_receipt(store: &NodeId, store_index: usize, n: u64) -> Receipt {
    let skus: Vec<String> = (0..LINES as u64)
        .map(|line| {
            let k = (n * 7 + line * 131 + store_index as u64 * 17) % SKUS;
            format!("SKU{k:05}")
        })
        .collect();
    let lines: Vec<(&str, i64, i64)> = skus
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (
                s.as_str(),
                1 + (n as i64 + i as i64) % 3,
                199 + 100 * i as i64,
            )
        })
        .collect();
    receipt(store, n, (NOW_MS + n * 1_000) as i64, None, &lines)
}

/// Builds a chain in `dir`, lets every store commit its receipts locally, and returns what they
/// would push. Stores write with `Durability::Relaxed`: their preparation is not measured, and
/// fsyncing ~100k local commits would only make the run long.
fn prepare(dir: &Path, case: &Case) -> Prepared {
    let chain = Chain::new(dir, STORES, REGIONS, Durability::Relaxed);
    let (hq, mut replicas) = chain.bootstrap(NOW_MS);
    drop(hq); // reopened with Durability::Full for the measured part
    let mut prepared = Prepared {
        stores: Vec::new(),
        receipts: Vec::new(),
        change_sets: Vec::new(),
        void_change_sets: Vec::new(),
    };
    for (index, replica) in replicas.iter_mut().enumerate() {
        let store = replica.node().clone();
        // Voids of receipts HQ never sees (`S001-X7`), 500 to a change set.
        let voids: Vec<Op> = (0..case.voids_per_store)
            .map(|v| {
                Op::Void(Void {
                    id: RecordId::new(format!("{store}-V{v}")).expect("void id"),
                    store: store.clone(),
                    original: RecordId::new(format!("{store}-X{v}")).expect("receipt id"),
                    at_ms: NOW_MS as i64,
                    reason: "bench".into(),
                })
            })
            .collect();
        let void_change_sets = voids
            .chunks(500)
            .map(|ops| {
                replica
                    .commit_local(Topic::Sales, ops.to_vec(), NOW_MS)
                    .expect("store commits voids locally")
                    .signed
            })
            .collect();
        let mut receipts = Vec::with_capacity(case.cs_per_store * case.receipts_per_cs);
        let mut change_sets = Vec::with_capacity(case.cs_per_store);
        let mut n = 0u64;
        for c in 0..case.cs_per_store {
            let mut ops = Vec::with_capacity(case.receipts_per_cs);
            for _ in 0..case.receipts_per_cs {
                n += 1;
                let r = make_receipt(&store, index, n);
                ops.push(Op::Receipt(r.clone()));
                receipts.push(r);
            }
            let committed = replica
                .commit_local(Topic::Sales, ops, NOW_MS + c as u64)
                .expect("store commits a sale locally");
            change_sets.push(committed.signed);
        }
        prepared.stores.push(store);
        prepared.receipts.push(receipts);
        prepared.change_sets.push(change_sets);
        prepared.void_change_sets.push(void_change_sets);
    }
    prepared
}

/// The order HQ sees the pushes in: round after round, each store's next batch of up to
/// `batch_max` change sets.
fn plan_batches(prepared: &Prepared, batch_max: usize) -> Vec<BatchPlan> {
    let mut plan = Vec::new();
    let longest = prepared.change_sets.iter().map(Vec::len).max().unwrap_or(0);
    let mut start = 0;
    while start < longest {
        for (store, change_sets) in prepared.change_sets.iter().enumerate() {
            let end = (start + batch_max).min(change_sets.len());
            if start < end {
                plan.push(BatchPlan { store, start, end });
            }
        }
        start += batch_max;
    }
    plan
}

/// The measured part of case 1: a fresh HQ replica (WAL, synchronous=FULL) applies every batch.
fn apply_at_hq(dir: &Path, prepared: &Prepared, plan: &[BatchPlan], receipts: usize) -> Duration {
    // Same folder and keys as `prepare`, so this opens the HQ file the directory was written to.
    let chain = Chain::new(dir, STORES, REGIONS, Durability::Full);
    let mut hq = chain.open_hq();
    // The voids come first in each store's stream; HQ applies them before the clock starts.
    for (store, voids) in prepared.stores.iter().zip(&prepared.void_change_sets) {
        for batch in voids.chunks(BATCH_CHANGE_SETS_MAX) {
            let report = hq
                .apply_batch(batch, Some(store), NOW_MS)
                .expect("HQ applies voids");
            assert!(
                report.rejected.is_empty(),
                "voids rejected: {:?}",
                report.rejected
            );
        }
    }
    let started = Instant::now();
    for b in plan {
        let batch = &prepared.change_sets[b.store][b.start..b.end];
        let store = &prepared.stores[b.store];
        let report = hq
            .apply_batch(batch, Some(store), NOW_MS)
            .expect("HQ applies a batch");
        assert!(
            report.rejected.is_empty(),
            "HQ rejected change sets of {store}: {:?}",
            report.rejected
        );
        assert_eq!(report.duplicates, 0, "unexpected duplicates from {store}");
        assert_eq!(
            report.applied.len(),
            batch.len(),
            "batch of {store} not whole"
        );
    }
    let took = started.elapsed();
    let held = hq.receipt_count().expect("count receipts at HQ");
    assert_eq!(
        held, receipts as u64,
        "HQ holds {held} receipts, {receipts} were sent"
    );
    took
}

/// Case 2: the same rows straight into SQLite, one transaction per apply batch.
fn plain_insert(path: &Path, prepared: &Prepared, plan: &[BatchPlan], r: usize) -> Duration {
    let mut conn = Connection::open(path).expect("open plain database");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("WAL");
    conn.pragma_update(None, "synchronous", "FULL")
        .expect("synchronous=FULL");
    // Columns, keys and index as in shared/src/replica/schema.sql.
    conn.execute_batch(
        "CREATE TABLE receipts (
             id          TEXT PRIMARY KEY,
             store       TEXT    NOT NULL,
             sold_at_ms  INTEGER NOT NULL,
             member      TEXT,
             total_cents INTEGER NOT NULL,
             voided      INTEGER NOT NULL DEFAULT 0
         ) WITHOUT ROWID;
         CREATE INDEX receipts_by_store_time ON receipts (store, sold_at_ms);
         CREATE TABLE receipt_lines (
             receipt          TEXT    NOT NULL,
             line_no          INTEGER NOT NULL,
             sku              TEXT    NOT NULL,
             qty              INTEGER NOT NULL,
             unit_price_cents INTEGER NOT NULL,
             discount_cents   INTEGER NOT NULL,
             PRIMARY KEY (receipt, line_no)
         ) WITHOUT ROWID;",
    )
    .expect("create plain tables");
    let started = Instant::now();
    for b in plan {
        let receipts = &prepared.receipts[b.store][b.start * r..b.end * r];
        let tx = conn.transaction().expect("begin");
        {
            let mut receipt_stmt = tx
                .prepare_cached(
                    "INSERT INTO receipts (id, store, sold_at_ms, member, total_cents)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .expect("prepare receipt insert");
            let mut line_stmt = tx
                .prepare_cached(
                    "INSERT INTO receipt_lines
                     (receipt, line_no, sku, qty, unit_price_cents, discount_cents)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .expect("prepare line insert");
            for rec in receipts {
                receipt_stmt
                    .execute(params![
                        rec.id.as_str(),
                        rec.store.as_str(),
                        rec.sold_at_ms,
                        rec.member.as_ref().map(|m| m.as_str()),
                        rec.total_cents()
                    ])
                    .expect("insert receipt");
                for (line_no, line) in rec.lines.iter().enumerate() {
                    line_stmt
                        .execute(params![
                            rec.id.as_str(),
                            line_no as i64,
                            line.sku.as_str(),
                            line.qty,
                            line.unit_price_cents,
                            line.discount_cents
                        ])
                        .expect("insert line");
                }
            }
        }
        tx.commit().expect("commit");
    }
    let took = started.elapsed();
    let count = |table: &str| -> usize {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
            row.get::<_, i64>(0)
        })
        .expect("count rows") as usize
    };
    let receipts: usize = prepared.receipts.iter().map(Vec::len).sum();
    assert_eq!(count("receipts"), receipts, "plain receipts");
    assert_eq!(count("receipt_lines"), receipts * LINES, "plain lines");
    took
}

fn run_case(case: &Case, verbose: bool) -> (CaseResult, Prepared, Vec<BatchPlan>) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let say = |what: &str| {
        if verbose {
            eprintln!("{}: {what} ...", case.label);
        }
    };
    say(&format!(
        "preparing {STORES} stores x {} change sets of {} receipts",
        case.cs_per_store, case.receipts_per_cs
    ));
    let prepared = prepare(dir.path(), case);
    let plan = plan_batches(&prepared, case.batch_max);
    let receipts: usize = prepared.receipts.iter().map(Vec::len).sum();
    let change_sets: usize = prepared.change_sets.iter().map(Vec::len).sum();
    say(&format!("HQ applies {change_sets} change sets"));
    let apply = apply_at_hq(dir.path(), &prepared, &plan, receipts);
    say("plain SQLite inserts");
    let plain = plain_insert(
        &dir.path().join("plain.db"),
        &prepared,
        &plan,
        case.receipts_per_cs,
    );
    let result = CaseResult {
        label: case.label,
        receipts_per_cs: case.receipts_per_cs,
        batch_max: case.batch_max,
        voids: case.voids_per_store * STORES,
        receipts,
        change_sets,
        batches: plan.len(),
        apply,
        plain,
    };
    (result, prepared, plan)
}

/// Signature checks over the first `VERIFY_COUNT` change sets HQ would see.
struct VerifyResult {
    count: usize,
    one_by_one: Duration,
    batched: Duration,
}

/// Change sets in HQ's order, each with its origin's key.
fn in_hq_order<'a>(
    prepared: &'a Prepared,
    plan: &[BatchPlan],
    keys: &[VerifyingKey],
    limit: usize,
) -> Vec<(&'a SignedChangeSet, VerifyingKey)> {
    plan.iter()
        .flat_map(|b| {
            prepared.change_sets[b.store][b.start..b.end]
                .iter()
                .map(move |cs| (cs, keys[b.store]))
        })
        .take(limit)
        .collect()
}

fn store_keys(prepared: &Prepared) -> Vec<VerifyingKey> {
    prepared
        .stores
        .iter()
        .map(|s| key_for(s.as_str()).verifying_key())
        .collect()
}

fn verify_section(prepared: &Prepared, plan: &[BatchPlan]) -> VerifyResult {
    let keys = store_keys(prepared);
    let items = in_hq_order(prepared, plan, &keys, VERIFY_COUNT);
    let started = Instant::now();
    for (cs, key) in &items {
        cs.verify_signature(key).expect("signature verifies");
    }
    let one_by_one = started.elapsed();

    let started = Instant::now();
    for chunk in items.chunks(BATCH_CHANGE_SETS_MAX) {
        // The signed input is prefix || body, as `verify_signature` builds it.
        let inputs: Vec<Vec<u8>> = chunk
            .iter()
            .map(|(cs, _)| [CHANGE_SET_SIG_PREFIX, &cs.body[..]].concat())
            .collect();
        let messages: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
        let signatures: Vec<Signature> = chunk
            .iter()
            .map(|(cs, _)| Signature::from_bytes(&cs.sig))
            .collect();
        let chunk_keys: Vec<VerifyingKey> = chunk.iter().map(|(_, k)| *k).collect();
        ed25519_dalek::verify_batch(&messages, &signatures, &chunk_keys).expect("batch verifies");
    }
    let batched = started.elapsed();
    VerifyResult {
        count: items.len(),
        one_by_one,
        batched,
    }
}

/// Microseconds per change set of the gate's pieces, measured alone over the R = 1 change sets.
struct Split {
    decode_us: f64,
    key_us: f64,
    verify_us: f64,
    hash_us: f64,
    apply_us: f64,
}

impl Split {
    /// What is left of the apply for SQLite and the rest.
    fn rest_us(&self) -> f64 {
        self.apply_us - self.decode_us - self.key_us - self.verify_us - self.hash_us
    }
}

fn split_section(
    prepared: &Prepared,
    plan: &[BatchPlan],
    apply: Duration,
    verify: &VerifyResult,
) -> Split {
    let keys = store_keys(prepared);
    let items = in_hq_order(prepared, plan, &keys, usize::MAX);
    let n = items.len() as f64;
    let us = |d: Duration, count: f64| d.as_secs_f64() * 1e6 / count;

    // validate::open: size check and postcard decode of the body.
    let started = Instant::now();
    for (cs, _) in &items {
        std::hint::black_box(validate::open(cs).expect("decodes"));
    }
    let decode_us = us(started.elapsed(), n);

    // The gate reads the origin's key from the directory as 32 bytes and decompresses it into a
    // VerifyingKey for every change set.
    let raw: Vec<[u8; 32]> = keys.iter().map(VerifyingKey::to_bytes).collect();
    let started = Instant::now();
    for i in 0..items.len() {
        std::hint::black_box(
            VerifyingKey::from_bytes(&raw[i % raw.len()]).expect("key decompresses"),
        );
    }
    let key_us = us(started.elapsed(), n);

    // blake3 of the body: once for the gate's chain check, once more for the new head.
    let started = Instant::now();
    for (cs, _) in &items {
        std::hint::black_box(cs.hash());
        std::hint::black_box(cs.hash());
    }
    let hash_us = us(started.elapsed(), n);

    Split {
        decode_us,
        key_us,
        verify_us: us(verify.one_by_one, verify.count as f64),
        hash_us,
        apply_us: us(apply, n),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; the only flag of our own is `--json`.
    let json_only = std::env::args().any(|a| a == "--json");
    let verbose = !json_only;
    let started = Instant::now();

    // The two cases of the brief, ~100,000 receipts each, in batches of 512 change sets.
    let r1 = Case {
        label: "r1",
        receipts_per_cs: 1,
        cs_per_store: 2_000,
        batch_max: BATCH_CHANGE_SETS_MAX,
        voids_per_store: 0,
    };
    let r32 = Case {
        label: "r32",
        receipts_per_cs: 32,
        cs_per_store: 62,
        batch_max: BATCH_CHANGE_SETS_MAX,
        voids_per_store: 0,
    };
    // Two small extra cases. `r1_batch1`: every push is one change set of one receipt, so every
    // receipt pays a durable commit (what a realtime store pushing each sale at once costs HQ if
    // HQ applies each push in its own transaction). `r32_10k_voids`: HQ already holds 10,000
    // voids when the receipts arrive (a few days of a real chain's voids).
    let r1_batch1 = Case {
        label: "r1_batch1",
        receipts_per_cs: 1,
        cs_per_store: 40,
        batch_max: 1,
        voids_per_store: 0,
    };
    let r32_voids = Case {
        label: "r32_10k_voids",
        receipts_per_cs: 32,
        cs_per_store: 2,
        batch_max: BATCH_CHANGE_SETS_MAX,
        voids_per_store: 200,
    };

    let (res1, prepared1, plan1) = run_case(&r1, verbose);
    if verbose {
        eprintln!("verifying signatures ...");
    }
    let verify = verify_section(&prepared1, &plan1);
    let split = split_section(&prepared1, &plan1, res1.apply, &verify);
    drop(prepared1);
    let (res32, _, _) = run_case(&r32, verbose);
    let (res1b, _, _) = run_case(&r1_batch1, verbose);
    let (res32v, _, _) = run_case(&r32_voids, verbose);
    let results = [&res1, &res32, &res1b, &res32v];

    let verify_per_s = per_s(verify.count, verify.one_by_one);
    let batch_verify_per_s = per_s(verify.count, verify.batched);

    if verbose {
        println!();
        println!(
            "HQ apply vs plain SQLite ({STORES} stores, {LINES} lines/receipt, WAL + synchronous=FULL)"
        );
        println!(
            "{:<14} {:>3} {:>5} {:>6} {:>7} {:>6} {:>7} {:>7} {:>11} {:>10} {:>12} {:>10} {:>6}",
            "case",
            "R",
            "batch",
            "voids",
            "rcpts",
            "chsets",
            "batches",
            "apply s",
            "applied r/s",
            "lines/s",
            "plain rows/s",
            "plain r/s",
            "ratio"
        );
        for r in results {
            println!(
                "{:<14} {:>3} {:>5} {:>6} {:>7} {:>6} {:>7} {:>7.2} {:>11.0} {:>10.0} {:>12.0} {:>10.0} {:>6.3}",
                r.label,
                r.receipts_per_cs,
                r.batch_max,
                r.voids,
                r.receipts,
                r.change_sets,
                r.batches,
                r.apply.as_secs_f64(),
                r.applied_receipts_per_s(),
                r.applied_lines_per_s(),
                r.plain_rows_per_s(),
                r.plain_receipts_per_s(),
                r.ratio()
            );
        }
        println!();
        println!(
            "signatures ({} change sets, one thread): verify {:.0}/s, verify_batch(512) {:.0}/s",
            verify.count, verify_per_s, batch_verify_per_s
        );
        println!();
        println!("where one r1 change set's apply goes (us per change set, pieces timed alone):");
        println!("  decode (validate::open)        {:>7.2}", split.decode_us);
        println!("  origin key decompression       {:>7.2}", split.key_us);
        println!("  ed25519 verify                 {:>7.2}", split.verify_us);
        println!("  blake3 x2                      {:>7.2}", split.hash_us);
        println!("  SQLite and the rest            {:>7.2}", split.rest_us());
        println!("  total apply                    {:>7.2}", split.apply_us);
        println!();
        println!(
            "targets (not asserted): >= 30000 receipts/s applied, ratio >= 0.5; whole run {:.1} s",
            started.elapsed().as_secs_f64()
        );
        println!();
    }

    let round = |x: f64, places: i32| {
        let f = 10f64.powi(places);
        (x * f).round() / f
    };
    let mut json = serde_json::Map::new();
    let mut put = |key: String, value: serde_json::Value| {
        json.insert(key, value);
    };
    put("bench".into(), "apply".into());
    put("stores".into(), STORES.into());
    put("lines_per_receipt".into(), LINES.into());
    for r in results {
        let l = r.label;
        put(format!("receipts_{l}"), r.receipts.into());
        put(
            format!("receipts_per_s_{l}"),
            round(r.applied_receipts_per_s(), 0).into(),
        );
        put(
            format!("lines_per_s_{l}"),
            round(r.applied_lines_per_s(), 0).into(),
        );
        put(
            format!("plain_receipts_per_s_{l}"),
            round(r.plain_receipts_per_s(), 0).into(),
        );
        put(
            format!("plain_rows_per_s_{l}"),
            round(r.plain_rows_per_s(), 0).into(),
        );
        put(format!("ratio_{l}"), round(r.ratio(), 3).into());
    }
    put(
        "plain_receipts_per_s".into(),
        round(res1.plain_receipts_per_s(), 0).into(),
    );
    put("verify_per_s".into(), round(verify_per_s, 0).into());
    put(
        "batch_verify_per_s".into(),
        round(batch_verify_per_s, 0).into(),
    );
    put(
        "split_r1_decode_us".into(),
        round(split.decode_us, 2).into(),
    );
    put("split_r1_key_us".into(), round(split.key_us, 2).into());
    put(
        "split_r1_verify_us".into(),
        round(split.verify_us, 2).into(),
    );
    put("split_r1_hash_us".into(), round(split.hash_us, 2).into());
    put("split_r1_rest_us".into(), round(split.rest_us(), 2).into());
    put(
        "seconds".into(),
        round(started.elapsed().as_secs_f64(), 1).into(),
    );
    println!("{}", serde_json::Value::Object(json));
}
