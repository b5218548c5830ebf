//! CSV import and export at HQ: the catalog and price lists come from spreadsheets, and stock
//! goes back to them.
//!
//! Imports are all or nothing: every row is checked first (a bad row is reported with its line
//! number and what is wrong, and nothing is written); then the rows are written as change sets of
//! at most [`IMPORT_OPS_PER_CHANGE_SET`] ops each.
//!
//! | file | columns (header row required) |
//! |---|---|
//! | products | `sku,name,category,unit_cost,barcodes` (barcodes separated by `;`) |
//! | prices | `sku,scope,kind,price,effective_from_ms,effective_to_ms` (the last two may be empty) |
//! | stock (export) | `store,region,sku,category,qty,as_of_ms` |

use crate::admin::{parse_cents, parse_kind};
use crate::config::HqDir;
use anyhow::{Context, Result, bail};
use chainsync::changeset::Op;
use chainsync::ids::{RecordId, Scope, Sku, Topic};
use chainsync::model::{PriceEntry, PriceKind, Product};
use chainsync::replica::StockFilter;
use chainsync::transport::now_ms;
use std::collections::BTreeMap;
use std::path::Path;

/// Ops per change set written by an import: well under the change-set size limit for rows of
/// ordinary length, and small enough that stores apply each in one short transaction.
pub const IMPORT_OPS_PER_CHANGE_SET: usize = 2_000;
/// Rows one import may hold.
pub const IMPORT_ROWS_MAX: usize = 1_000_000;

fn reader(path: &Path) -> Result<csv::Reader<std::fs::File>> {
    csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("opening {}", path.display()))
}

fn check_header(rdr: &mut csv::Reader<std::fs::File>, expected: &[&str]) -> Result<()> {
    let header: Vec<String> = rdr.headers()?.iter().map(str::to_owned).collect();
    if header != expected {
        bail!(
            "header is `{}`, expected `{}`",
            header.join(","),
            expected.join(",")
        );
    }
    Ok(())
}

/// Reads rows, naming the line of the first bad one.
fn rows(
    path: &Path,
    expected: &[&str],
    mut parse: impl FnMut(&csv::StringRecord) -> Result<Op>,
) -> Result<Vec<(usize, Op)>> {
    let mut rdr = reader(path)?;
    check_header(&mut rdr, expected).with_context(|| format!("{}", path.display()))?;
    let mut ops = Vec::new();
    for (i, record) in rdr.records().enumerate() {
        let line = i + 2;
        let record = record.with_context(|| format!("{} line {line}", path.display()))?;
        if ops.len() == IMPORT_ROWS_MAX {
            bail!("{}: more than {IMPORT_ROWS_MAX} rows", path.display());
        }
        let op = parse(&record).with_context(|| format!("{} line {line}", path.display()))?;
        ops.push((line, op));
    }
    Ok(ops)
}

fn field<'a>(record: &'a csv::StringRecord, i: usize, name: &str) -> Result<&'a str> {
    record
        .get(i)
        .with_context(|| format!("missing column {name}"))
}

/// `hq-server import products`.
pub fn import_products(dir: &HqDir, path: &Path) -> Result<usize> {
    let ops = rows(
        path,
        &["sku", "name", "category", "unit_cost", "barcodes"],
        |r| {
            let name = field(r, 1, "name")?;
            if name.is_empty() {
                bail!("name is empty");
            }
            let barcodes = field(r, 4, "barcodes")?;
            Ok(Op::ProductUpsert(Product {
                sku: Sku::new(field(r, 0, "sku")?)?,
                name: name.to_owned(),
                category: field(r, 2, "category")?.to_owned(),
                unit_cost_cents: parse_cents(field(r, 3, "unit_cost")?)?,
                barcodes: barcodes
                    .split(';')
                    .filter(|b| !b.is_empty())
                    .map(str::to_owned)
                    .collect(),
                active: true,
            }))
        },
    )?;
    commit_chunks(
        dir,
        ops.into_iter()
            .map(|(_, op)| (Topic::Catalog, op))
            .collect(),
    )
}

/// `hq-server import prices`.
pub fn import_prices(dir: &HqDir, path: &Path) -> Result<usize> {
    let now = now_ms() as i64;
    let ops = rows(
        path,
        &[
            "sku",
            "scope",
            "kind",
            "price",
            "effective_from_ms",
            "effective_to_ms",
        ],
        |r| {
            let sku = Sku::new(field(r, 0, "sku")?)?;
            let scope: Scope = field(r, 1, "scope")?.parse()?;
            let kind = parse_kind(field(r, 2, "kind")?)?;
            let price_cents = parse_cents(field(r, 3, "price")?)?;
            let optional = |i: usize, name: &str| -> Result<Option<i64>> {
                let text = field(r, i, name)?;
                if text.is_empty() {
                    Ok(None)
                } else {
                    Ok(Some(
                        text.parse().with_context(|| format!("{name} `{text}`"))?,
                    ))
                }
            };
            let from = optional(4, "effective_from_ms")?.unwrap_or(now);
            let to = optional(5, "effective_to_ms")?;
            if to.is_some_and(|to| to <= from) {
                bail!("effective_to_ms must come after effective_from_ms");
            }
            Ok(Op::PriceUpsert(PriceEntry {
                id: price_entry_id(&sku, kind, from)?,
                sku,
                scope,
                kind,
                price_cents,
                effective_from_ms: from,
                effective_to_ms: to,
            }))
        },
    )?;
    // Every sku must be in the catalog: a price for a sku nobody can sell is a typo.
    let state = dir.load()?;
    let replica = dir.open_replica(&state.key)?;
    let mut tagged = Vec::with_capacity(ops.len());
    for (line, op) in ops {
        if let Op::PriceUpsert(entry) = &op {
            if replica.product(&entry.sku)?.is_none() {
                bail!(
                    "{} line {line}: sku {} is not in the catalog (import products first)",
                    path.display(),
                    entry.sku
                );
            }
            if !replica.scope_known(&entry.scope)? {
                bail!(
                    "{} line {line}: scope {}: no such store or region (add it first)",
                    path.display(),
                    entry.scope
                );
            }
            tagged.push((Topic::Prices(entry.scope.clone()), op));
        }
    }
    drop(replica);
    commit_chunks(dir, tagged)
}

/// The id HQ gives a price entry: sku, kind and start, so re-importing the same row replaces it.
pub fn price_entry_id(sku: &Sku, kind: PriceKind, from_ms: i64) -> Result<RecordId> {
    let kind = match kind {
        PriceKind::Retail => "r",
        PriceKind::Member => "m",
        PriceKind::Wholesale => "w",
    };
    RecordId::new(format!("hq-{sku}.{kind}.{from_ms}"))
        .with_context(|| format!("sku {sku} is too long to name a price entry"))
}

/// Writes ops grouped by topic, in change sets of at most [`IMPORT_OPS_PER_CHANGE_SET`].
fn commit_chunks(dir: &HqDir, ops: Vec<(Topic, Op)>) -> Result<usize> {
    let count = ops.len();
    let mut by_topic: BTreeMap<Topic, Vec<Op>> = BTreeMap::new();
    for (topic, op) in ops {
        by_topic.entry(topic).or_default().push(op);
    }
    let state = dir.load()?;
    let mut replica = dir.open_replica(&state.key)?;
    for (topic, ops) in by_topic {
        let mut ops = ops.into_iter().peekable();
        while ops.peek().is_some() {
            let chunk: Vec<Op> = ops.by_ref().take(IMPORT_OPS_PER_CHANGE_SET).collect();
            let committed = replica.commit_local(topic.clone(), chunk, now_ms())?;
            println!("wrote {} seq {}", committed.stream, committed.seq);
        }
    }
    Ok(count)
}

/// `hq-server export stock`: consolidated stock with freshness.
pub fn export_stock(dir: &HqDir, path: &Path) -> Result<usize> {
    let state = dir.load()?;
    let replica = dir.open_replica(&state.key)?;
    let rows = replica.stock_report(&StockFilter::default())?;
    let mut w =
        csv::Writer::from_path(path).with_context(|| format!("creating {}", path.display()))?;
    w.write_record(["store", "region", "sku", "category", "qty", "as_of_ms"])?;
    for r in &rows {
        w.write_record([
            r.store.clone(),
            r.region.clone(),
            r.sku.clone(),
            r.category.clone().unwrap_or_default(),
            r.qty.to_string(),
            r.as_of_ms.map(|t| t.to_string()).unwrap_or_default(),
        ])?;
    }
    w.flush()?;
    Ok(rows.len())
}

/// A report HQ writes as CSV (CLI) or answers as JSON or CSV (API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// `promotion,store|region,receipts,units,sales_cents,discount_cents`.
    Promotions { by_region: bool },
    /// `store,receipt,sku,kind,list_cents,cents,reason,sold_at_ms`.
    Overrides,
    /// `return,store,original,at_ms,refund_cents,verified,status`.
    UnverifiedReturns,
    /// `member,store,account,balance,reasons,entry,amount,receipt,at_ms,auth`: cards overdrawn
    /// or taken from offline beyond policy, with the offline takes behind them.
    CardExceptions,
    /// `phone,store,member,name`: members sharing a phone, possibly one person signed up twice.
    DuplicateMembers,
    /// `receipt,store,sold_at_ms,charged_cents,hq_cents,difference_cents,cause,detail`: receipts
    /// HQ's price check priced otherwise than the store charged.
    Pricing,
    /// `stream,store,next_seq,since_ms,kind,reason,action`: streams halted at HQ by an
    /// integrity failure, and what resolves each.
    Halts,
}

/// The report's header and rows, as text cells.
pub fn report_rows(
    replica: &chainsync::replica::Replica,
    report: Report,
) -> Result<(Vec<&'static str>, Vec<Vec<String>>)> {
    Ok(match report {
        Report::Promotions { by_region } => (
            vec![
                "promotion",
                if by_region { "region" } else { "store" },
                "receipts",
                "units",
                "sales_cents",
                "discount_cents",
            ],
            replica
                .promotion_report(by_region)?
                .into_iter()
                .map(|r| {
                    vec![
                        r.promotion,
                        r.group,
                        r.receipts.to_string(),
                        r.units.to_string(),
                        r.sales_cents.to_string(),
                        r.discount_cents.to_string(),
                    ]
                })
                .collect(),
        ),
        Report::Overrides => (
            vec![
                "store",
                "receipt",
                "sku",
                "kind",
                "list_cents",
                "cents",
                "reason",
                "sold_at_ms",
            ],
            replica
                .override_report()?
                .into_iter()
                .map(|r| {
                    vec![
                        r.store,
                        r.receipt,
                        r.sku,
                        r.kind.to_owned(),
                        r.list_cents.to_string(),
                        r.cents.to_string(),
                        r.reason,
                        r.sold_at_ms.to_string(),
                    ]
                })
                .collect(),
        ),
        Report::UnverifiedReturns => (
            vec![
                "return",
                "store",
                "original",
                "at_ms",
                "refund_cents",
                "verified",
                "status",
            ],
            replica
                .unverified_returns()?
                .into_iter()
                .map(|r| {
                    vec![
                        r.id,
                        r.store,
                        r.original,
                        r.at_ms.to_string(),
                        r.refund_cents.to_string(),
                        r.verified.to_string(),
                        r.status,
                    ]
                })
                .collect(),
        ),
        Report::CardExceptions => crate::loyalty::exception_rows(replica)?,
        Report::DuplicateMembers => crate::loyalty::duplicate_rows(replica)?,
        Report::Halts => (
            vec![
                "stream", "store", "next_seq", "since_ms", "kind", "reason", "action",
            ],
            replica
                .halted_streams()?
                .into_iter()
                .map(|h| {
                    vec![
                        h.stream.to_string(),
                        h.stream.origin.to_string(),
                        h.next_seq.to_string(),
                        h.since_ms.map(|t| t.to_string()).unwrap_or_default(),
                        h.kind.map(|k| k.as_str()).unwrap_or_default().to_owned(),
                        h.reason,
                        h.kind.map(|k| k.action()).unwrap_or_default().to_owned(),
                    ]
                })
                .collect(),
        ),
        Report::Pricing => (
            vec![
                "receipt",
                "store",
                "sold_at_ms",
                "charged_cents",
                "hq_cents",
                "difference_cents",
                "cause",
                "detail",
            ],
            replica
                .price_differences(None)?
                .into_iter()
                .map(|d| {
                    let hq = d.hq_cents.map(|c| c.to_string()).unwrap_or_default();
                    let difference = d
                        .hq_cents
                        .map(|c| d.charged_cents.saturating_sub(c).to_string())
                        .unwrap_or_default();
                    vec![
                        d.receipt,
                        d.store,
                        d.sold_at_ms.to_string(),
                        d.charged_cents.to_string(),
                        hq,
                        difference,
                        d.cause.as_str().to_owned(),
                        d.detail,
                    ]
                })
                .collect(),
        ),
    })
}

/// Writes the report as CSV with a header row.
pub fn write_report(
    replica: &chainsync::replica::Replica,
    report: Report,
    out: &mut impl std::io::Write,
) -> Result<()> {
    let (header, rows) = report_rows(replica, report)?;
    let mut w = csv::Writer::from_writer(out);
    w.write_record(&header)?;
    for row in rows {
        w.write_record(&row)?;
    }
    w.flush()?;
    Ok(())
}
