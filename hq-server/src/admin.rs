//! HQ's administrative commands, run against the data folder: add, list and revoke stores, set
//! prices. They write HQ's database directly; a running `hq-server serve` notices the new change
//! sets within [`chainsync::transport::hub::HEADS_POLL_MS`] and notifies the stores.

use crate::config::HqDir;
use anyhow::{Context, Result, bail};
use chainsync::changeset::Op;
use chainsync::ids::{NodeId, RegionId, Scope, Sku, Topic};
use chainsync::model::{PriceEntry, PriceKind, Promotion, StoreMode};
use chainsync::replica::{PendingStore, Replica};
use chainsync::transport::now_ms;
use chainsync::transport::provision::Provisioning;
use std::path::Path;

/// Parses a store mode name.
pub fn parse_mode(mode: &str) -> Result<StoreMode> {
    Ok(match mode {
        "realtime" => StoreMode::Realtime,
        "batch" => StoreMode::Batch,
        "hosted" => StoreMode::Hosted,
        other => bail!("unknown store mode `{other}` (realtime, batch or hosted)"),
    })
}

/// Parses a price kind name.
pub fn parse_kind(kind: &str) -> Result<PriceKind> {
    Ok(match kind {
        "retail" => PriceKind::Retail,
        "member" => PriceKind::Member,
        "wholesale" => PriceKind::Wholesale,
        other => bail!("unknown price kind `{other}` (retail, member or wholesale)"),
    })
}

/// Parses a money amount like `1.29` or `12` into cents.
pub fn parse_cents(text: &str) -> Result<i64> {
    let bad = || format!("`{text}` is not an amount like 1.29");
    let (units, fraction) = text.split_once('.').unwrap_or((text, ""));
    if units.is_empty() || fraction.len() > 2 || !units.bytes().all(|b| b.is_ascii_digit()) {
        bail!(bad());
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        bail!(bad());
    }
    let units: i64 = units.parse().with_context(bad)?;
    let fraction: i64 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<2}").parse().with_context(bad)?
    };
    units
        .checked_mul(100)
        .and_then(|c| c.checked_add(fraction))
        .with_context(bad)
}

/// `hq-server store add`: registers a store and writes its provisioning file.
pub fn add_store(dir: &HqDir, store: PendingStore, out: &Path, offline: bool) -> Result<()> {
    let state = dir.load()?;
    let mut replica = dir.open_replica(&state.key)?;
    let token = new_token();
    replica.add_store(&store, &token, now_ms())?;
    write_provisioning(&state, &mut replica, &store.id, token, offline, out)?;
    if offline {
        println!(
            "enrolled store {} offline: {} holds its key; bring it to the store with a bundle \
             (hq-server bundle export --id {}) and delete it after `store-agent init`",
            store.id,
            out.display(),
            store.id
        );
    }
    println!(
        "added store {} ({}, region {}, {}); provisioning file: {}",
        store.id,
        store.name,
        store.region,
        store.mode.as_str(),
        out.display()
    );
    Ok(())
}

/// `hq-server store replace`: a new provisioning file for a store whose machine (and key) was
/// lost. Enrolling with it gives the store a new key; the old one stays valid for what it signed.
pub fn replace_store(dir: &HqDir, id: &NodeId, out: &Path, offline: bool) -> Result<()> {
    let state = dir.load()?;
    let mut replica = dir.open_replica(&state.key)?;
    let token = new_token();
    let info = replica.replace_store(id, &token, now_ms())?;
    write_provisioning(&state, &mut replica, id, token, offline, out)?;
    println!(
        "store {id} ({}) can be set up again from {}: its new key takes over when it enrolls, and \
         it restores what it sold before from HQ",
        info.name,
        out.display()
    );
    Ok(())
}

/// A fresh one-time enrollment token.
fn new_token() -> String {
    let mut token_bytes = [0u8; 24];
    rand::fill(&mut token_bytes);
    hex::encode(token_bytes)
}

/// Writes the provisioning file for `store` with its one-time `token`. Offline, HQ enrolls the
/// store itself with a key it makes for it, and the file carries that key and the region.
fn write_provisioning(
    state: &crate::config::HqState,
    replica: &mut chainsync::replica::Replica,
    store: &NodeId,
    token: String,
    offline: bool,
    out: &Path,
) -> Result<()> {
    let mut provisioning = Provisioning {
        store: store.clone(),
        hq_addr: state.config.public_addr,
        hq_cert: hex::encode(&state.cert.cert_der),
        hq_public_key: hex::encode(state.key.verifying_key().to_bytes()),
        token,
        store_key: None,
        region: None,
    };
    if offline {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rng());
        let info = replica
            .enroll(
                store,
                &provisioning.token,
                key.verifying_key().to_bytes(),
                now_ms(),
            )?
            .map_err(|e| anyhow::anyhow!("enrolling {store} offline: {e}"))?;
        provisioning.store_key = Some(hex::encode(key.to_bytes()));
        provisioning.region = Some(info.region);
    }
    chainsync::transport::keyfile::write_secret(out, provisioning.to_toml()?.as_bytes())?;
    Ok(())
}

/// `hq-server store revoke`.
pub fn revoke_store(dir: &HqDir, store: &NodeId) -> Result<()> {
    let state = dir.load()?;
    let mut replica = dir.open_replica(&state.key)?;
    replica.update_store(store, now_ms(), |info| info.revoked = true)?;
    println!("revoked store {store}: its connections are refused and its change sets rejected");
    Ok(())
}

/// `hq-server region add`: a region, top-level or under `parent` (2- to 4-tier chains: HQ →
/// branch company → office → store). Prices and promotions for a region cover every store in it
/// and in the regions under it; a regional token for it sees them all.
pub fn add_region(dir: &HqDir, id: &RegionId, name: &str, parent: Option<RegionId>) -> Result<()> {
    let state = dir.load()?;
    let mut replica = dir.open_replica(&state.key)?;
    if let Some(parent) = &parent {
        let known: bool = replica.connection().query_row(
            "SELECT EXISTS (SELECT 1 FROM regions WHERE id = ?1)",
            [parent.as_str()],
            |r| r.get(0),
        )?;
        if !known {
            bail!("parent region {parent} does not exist (add it first)");
        }
        let path = replica.region_path(parent)?;
        if path.contains(id) {
            bail!("region {id} is above {parent} already: that would be a cycle");
        }
        if path.len() + 1 > chainsync::ids::REGION_DEPTH_MAX {
            bail!(
                "region {id} would be {} levels deep (at most {})",
                path.len() + 1,
                chainsync::ids::REGION_DEPTH_MAX
            );
        }
    }
    let region = chainsync::model::Region {
        id: id.clone(),
        name: name.to_owned(),
        parent: parent.clone(),
    };
    let committed =
        replica.commit_local(Topic::Directory, vec![Op::RegionUpsert(region)], now_ms())?;
    println!(
        "region {id} saved{}: {} seq {}",
        parent.map(|p| format!(" under {p}")).unwrap_or_default(),
        committed.stream,
        committed.seq
    );
    Ok(())
}

/// `hq-server region list`: every region with its parent and the path up from it.
pub fn list_regions(dir: &HqDir) -> Result<()> {
    let state = dir.load()?;
    let replica = dir.open_replica(&state.key)?;
    let mut stmt = replica
        .connection()
        .prepare("SELECT id, name FROM regions ORDER BY id")?;
    let rows: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (id, name) in rows {
        let path = replica.region_path(&RegionId::new(id.as_str())?)?;
        let path: Vec<&str> = path.iter().map(|r| r.as_str()).collect();
        println!("{id}\t{name}\t{}", path.join(" < "));
    }
    Ok(())
}

/// `hq-server store list`.
pub fn list_stores(dir: &HqDir) -> Result<()> {
    let state = dir.load()?;
    let replica = dir.open_replica(&state.key)?;
    println!(
        "{:<10} {:<24} {:<10} {:<9} {:<8} {:>8}  last seen",
        "store", "name", "region", "mode", "state", "backlog"
    );
    // The same figures as HQ's /metrics and /v1/stores: last heard from, and the change sets
    // HQ holds that the store has not confirmed holding.
    for row in replica.store_report(None)? {
        let last = row.last_seen_ms.map_or("never".to_owned(), |t| {
            format!("{} s ago", now_ms().saturating_sub(t.max(0) as u64) / 1000)
        });
        let state = match (row.revoked, row.halted_streams) {
            (true, _) => "revoked",
            (false, 0) => "enrolled",
            // `hq-server report halts` says which streams, why, and what to do.
            (false, _) => "HALTED",
        };
        println!(
            "{:<10} {:<24} {:<10} {:<9} {:<8} {:>8}  {last}",
            row.store, row.name, row.region, row.mode, state, row.backlog_change_sets
        );
    }
    for pending in replica.pending_stores()? {
        println!(
            "{:<10} {:<24} {:<10} {:<9} {:<8} {:>8}  -",
            pending.id,
            pending.name,
            pending.region,
            pending.mode.as_str(),
            "pending",
            "-"
        );
    }
    Ok(())
}

/// What `hq-server price set` asks for.
pub struct PriceRequest {
    pub sku: Sku,
    pub scope: Scope,
    pub kind: PriceKind,
    pub price_cents: i64,
    pub effective_from_ms: Option<i64>,
    pub effective_to_ms: Option<i64>,
}

/// `hq-server price set`: a price entry in its scope's stream. An entry is identified by sku, kind
/// and start time, so setting a price again for the same start replaces it, and a future price
/// stands beside today's until it takes over.
pub fn set_price(dir: &HqDir, req: PriceRequest) -> Result<()> {
    let state = dir.load()?;
    let mut replica = dir.open_replica(&state.key)?;
    let from = req.effective_from_ms.unwrap_or(now_ms() as i64);
    if req.effective_to_ms.is_some_and(|to| to <= from) {
        bail!("effective_to must come after effective_from");
    }
    if req.price_cents < 0 {
        bail!("a price cannot be negative");
    }
    let id = crate::csvio::price_entry_id(&req.sku, req.kind, from)?;
    if !replica.scope_known(&req.scope)? {
        bail!(
            "scope {}: no such store or region (add it first)",
            req.scope
        );
    }
    if let Scope::Region(region) = &req.scope
        && !replica.store_ids()?.iter().any(|s| {
            replica
                .store_info(s)
                .ok()
                .flatten()
                .is_some_and(|i| &i.region == region)
        })
    {
        eprintln!("note: no enrolled store is in region {region} yet");
    }
    let entry = PriceEntry {
        id,
        sku: req.sku,
        scope: req.scope.clone(),
        kind: req.kind,
        price_cents: req.price_cents,
        effective_from_ms: from,
        effective_to_ms: req.effective_to_ms,
    };
    let committed = replica.commit_local(
        Topic::Prices(req.scope),
        vec![Op::PriceUpsert(entry)],
        now_ms(),
    )?;
    println!("price set: {} seq {}", committed.stream, committed.seq);
    Ok(())
}

/// A region id from the command line.
pub fn parse_region(text: &str) -> Result<RegionId> {
    Ok(RegionId::new(text)?)
}

/// `hq-server product add`: adds or replaces a product of the catalog.
pub fn add_product(dir: &HqDir, product: chainsync::model::Product) -> Result<()> {
    let state = dir.load()?;
    let mut replica = dir.open_replica(&state.key)?;
    if product.name.trim().is_empty() {
        bail!("a product needs a name");
    }
    let sku = product.sku.clone();
    let committed =
        replica.commit_local(Topic::Catalog, vec![Op::ProductUpsert(product)], now_ms())?;
    println!(
        "product {sku} saved: {} seq {}",
        committed.stream, committed.seq
    );
    Ok(())
}

/// Longest life a token can be given, in days (about ten years).
pub const TOKEN_DAYS_MAX: u64 = 3_660;

/// A new HQ API token for `role` (`admin`, `readonly`, or `regional:<region>`, the region
/// known to HQ), refused after `expires_days` if given: the token (shown once) and how HQ keeps
/// it.
pub fn add_token(
    replica: &mut Replica,
    name: &str,
    role: &str,
    expires_days: Option<u64>,
    now_ms: u64,
) -> Result<(String, chainsync::replica::ApiToken)> {
    if name.trim().is_empty() {
        bail!("a token needs the name of who holds it");
    }
    let (role, region) = match role {
        "admin" | "readonly" => (role, None),
        other => match other.strip_prefix("regional:") {
            Some(region) => {
                let region = RegionId::new(region)?;
                if !replica.region_exists(&region)? {
                    bail!("no region {region} (`hq-server region list` shows them)");
                }
                ("regional", Some(region))
            }
            None => bail!("role `{other}` is not admin, readonly or regional:<region>"),
        },
    };
    let expires_ms = match expires_days {
        None => None,
        Some(days @ 1..=TOKEN_DAYS_MAX) => Some(now_ms.saturating_add(days * 86_400_000)),
        Some(days) => bail!("a token lives 1 to {TOKEN_DAYS_MAX} days, not {days}"),
    };
    let mut bytes = [0u8; 24];
    rand::fill(&mut bytes);
    let token = hex::encode(bytes);
    let kept = replica.add_api_token(&token, name, role, region.as_ref(), expires_ms, now_ms)?;
    Ok((token, kept))
}

/// `hq-server token list`: every token, revoked and expired ones too.
pub fn list_tokens(dir: &HqDir) -> Result<()> {
    let state = dir.load()?;
    let replica = dir.open_replica(&state.key)?;
    let now = now_ms();
    println!(
        "{:<12}  {:<20}  {:<16}  {:<13}  {:<13}  status",
        "id", "name", "role", "created", "expires"
    );
    for t in replica.api_tokens()? {
        let role = match &t.region {
            Some(region) => format!("{}:{region}", t.role),
            None => t.role.clone(),
        };
        let status = t.refusal(now).unwrap_or_else(|| "valid".into());
        let expires = t.expires_ms.map_or("never".into(), |ms| ms.to_string());
        println!(
            "{:<12}  {:<20}  {role:<16}  {:<13}  {expires:<13}  {status}",
            t.id, t.name, t.created_ms
        );
    }
    Ok(())
}

/// `hq-server token revoke`: the token is refused from now on (a running server too, at its
/// next request).
pub fn revoke_token(dir: &HqDir, id: &str) -> Result<()> {
    let state = dir.load()?;
    let mut replica = dir.open_replica(&state.key)?;
    let token = replica.revoke_api_token(id, now_ms())?;
    println!(
        "token {} ({}, {}) revoked at {}",
        token.id,
        token.name,
        token.role,
        token.revoked_ms.unwrap_or_default()
    );
    Ok(())
}

/// `hq-server promo add`: a promotion in its scope's stream (replacing one of the same id).
pub fn add_promo(dir: &HqDir, spec: crate::promo::PromotionSpec) -> Result<()> {
    let state = dir.load()?;
    let mut replica = dir.open_replica(&state.key)?;
    let promo = crate::promo::build(&replica, spec, now_ms() as i64)?;
    commit_promo(&mut replica, promo, "saved")
}

fn commit_promo(replica: &mut Replica, promo: Promotion, what: &str) -> Result<()> {
    let id = promo.id.clone();
    let committed = replica.commit_local(
        Topic::Promotions(promo.scope.clone()),
        vec![Op::PromotionUpsert(promo)],
        now_ms(),
    )?;
    println!(
        "promotion {id} {what}: {} seq {}",
        committed.stream, committed.seq
    );
    Ok(())
}

/// `hq-server promo end`: the promotion stops applying now (stores stop giving it as soon as
/// they hear; it stays listed, with its figures).
pub fn end_promo(dir: &HqDir, id: &str, scope: Scope) -> Result<()> {
    let state = dir.load()?;
    let mut replica = dir.open_replica(&state.key)?;
    let promo = crate::promo::ended(crate::promo::find(&replica, id, &scope)?, now_ms() as i64)?;
    commit_promo(&mut replica, promo, "ended")
}

/// `hq-server promo allocate`: how many units of the promotion `store` may give in all.
pub fn allocate_promo(
    dir: &HqDir,
    id: &str,
    scope: Scope,
    store: &NodeId,
    units: u32,
) -> Result<()> {
    let state = dir.load()?;
    let mut replica = dir.open_replica(&state.key)?;
    let promo = crate::promo::find(&replica, id, &scope)?;
    let promo = crate::promo::allocated(&replica, promo, store, units)?;
    commit_promo(
        &mut replica,
        promo,
        &format!("allocated {units} units to {store}"),
    )
}

/// `hq-server promo list`: every promotion, one JSON object a line (the rule as data).
pub fn list_promos(dir: &HqDir) -> Result<()> {
    let state = dir.load()?;
    let replica = dir.open_replica(&state.key)?;
    for p in replica.promotions()? {
        println!("{}", crate::promo::promotion_json(&p));
    }
    Ok(())
}

/// `hq-server promo remove`.
pub fn remove_promo(dir: &HqDir, id: &str, scope: Scope) -> Result<()> {
    let state = dir.load()?;
    let mut replica = dir.open_replica(&state.key)?;
    let id = crate::promo::find(&replica, id, &scope)?.id;
    let committed = replica.commit_local(
        Topic::Promotions(scope),
        vec![Op::PromotionRemove { id: id.clone() }],
        now_ms(),
    )?;
    println!(
        "promotion {id} removed: {} seq {}",
        committed.stream, committed.seq
    );
    Ok(())
}

/// `hq-server store set`: a store's time zone and whether it may set its own prices.
pub fn set_store(
    dir: &HqDir,
    store: &NodeId,
    time_zone: Option<String>,
    may_set_own_prices: Option<bool>,
) -> Result<()> {
    if let Some(tz) = &time_zone
        && !chainsync::checkout::LocalTime::at(0, tz).1
    {
        bail!("time zone `{tz}` is not an IANA zone name like Europe/Paris");
    }
    let state = dir.load()?;
    let mut replica = dir.open_replica(&state.key)?;
    let info = replica.update_store(store, now_ms(), |info| {
        if let Some(tz) = time_zone.clone() {
            info.time_zone = tz;
        }
        if let Some(may) = may_set_own_prices {
            info.may_set_own_prices = may;
        }
    })?;
    println!(
        "store {store}: time zone {}, may set own prices: {}",
        info.time_zone, info.may_set_own_prices
    );
    Ok(())
}

/// `hq-server store mode`: switches a store's mode; its agent follows at its next exchange
/// (a realtime agent at once, a batch agent at its next scheduled or requested sync).
pub fn set_store_mode(dir: &HqDir, store: &NodeId, mode: StoreMode) -> Result<()> {
    let state = dir.load()?;
    let mut replica = dir.open_replica(&state.key)?;
    replica.update_store(store, now_ms(), |info| info.mode = mode)?;
    println!("store {store} is now {}", mode.as_str());
    Ok(())
}

/// `hq-server bundle export`: the store's bundle, written under a temporary name and renamed, so a
/// half-written file is never taken for a whole one.
pub fn export_bundle(dir: &HqDir, store: &NodeId, out: &Path) -> Result<()> {
    if out.exists() {
        bail!("{} already exists", out.display());
    }
    let state = dir.load()?;
    let replica = dir.open_replica(&state.key)?;
    let bytes = chainsync::bundle::hq_bundle(&replica, &state.key, store, now_ms())?;
    chainsync::transport::process::write_new_file(out, &bytes)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} for {store} ({} bytes)",
        out.display(),
        bytes.len()
    );
    Ok(())
}

/// `hq-server bundle import`.
pub fn import_bundle(dir: &HqDir, file: &Path) -> Result<()> {
    let state = dir.load()?;
    let mut replica = dir.open_replica(&state.key)?;
    let bytes = chainsync::transport::process::read_bundle_file(file)
        .with_context(|| format!("reading {}", file.display()))?;
    let report = chainsync::transport::process::import_bundle_with_bar(&mut replica, &bytes, file)
        .with_context(|| format!("{} was not imported", file.display()))?;
    println!(
        "imported {} from {}: {} change sets applied, {} already here",
        file.display(),
        report.from,
        report.applied,
        report.duplicates
    );
    Ok(())
}

/// `hq-server loyalty set`: the chain's loyalty policy, replaced whole.
pub fn set_loyalty_policy(dir: &HqDir, spec: crate::loyalty::PolicySpec) -> Result<()> {
    let state = dir.load()?;
    let mut replica = dir.open_replica(&state.key)?;
    let policy = crate::loyalty::build_policy(spec)?;
    let committed =
        replica.commit_local(Topic::Members, vec![Op::LoyaltyPolicy(policy)], now_ms())?;
    println!(
        "loyalty policy set: {} seq {}",
        committed.stream, committed.seq
    );
    Ok(())
}

/// `hq-server loyalty show`.
pub fn show_loyalty_policy(dir: &HqDir) -> Result<()> {
    let state = dir.load()?;
    let replica = dir.open_replica(&state.key)?;
    println!(
        "{}",
        crate::loyalty::policy_json(&replica.loyalty_policy()?)
    );
    Ok(())
}

/// `hq-server member allowance`: a card's own offline allowance, or none.
pub fn set_member_allowance(
    dir: &HqDir,
    member: &str,
    allowance: Option<chainsync::model::Allowance>,
) -> Result<()> {
    let member: chainsync::ids::MemberId = member.parse().context("member")?;
    if let Some(a) = &allowance {
        a.check_bounds().map_err(anyhow::Error::msg)?;
    }
    let state = dir.load()?;
    let mut replica = dir.open_replica(&state.key)?;
    let committed = replica.commit_local(
        Topic::Members,
        vec![Op::MemberAllowance {
            member: member.clone(),
            allowance,
        }],
        now_ms(),
    )?;
    println!(
        "allowance of {member} set: {} seq {}",
        committed.stream, committed.seq
    );
    Ok(())
}

/// `hq-server member adjust`.
pub fn adjust_member(
    dir: &HqDir,
    member: &str,
    account: &str,
    amount: i64,
    note: &str,
    no: String,
) -> Result<()> {
    let member: chainsync::ids::MemberId = member.parse().context("member")?;
    let account = crate::loyalty::parse_account(account)?;
    let state = dir.load()?;
    let mut replica = dir.open_replica(&state.key)?;
    let Some(op) = crate::loyalty::adjustment(
        &replica,
        &no,
        &member,
        account,
        amount,
        note,
        now_ms() as i64,
    )?
    else {
        println!("adjustment hq-A{no} was already made");
        return Ok(());
    };
    replica.commit_local(Topic::Members, vec![op], now_ms())?;
    println!(
        "adjustment hq-A{no} of {member}: balance now {}",
        replica.balance(&member, account)?
    );
    Ok(())
}

/// `hq-server member statement`.
pub fn member_statement(dir: &HqDir, member: &str) -> Result<()> {
    let member: chainsync::ids::MemberId = member.parse().context("member")?;
    let state = dir.load()?;
    let replica = dir.open_replica(&state.key)?;
    println!("{}", crate::loyalty::statement_json(&replica, &member)?);
    Ok(())
}

/// `hq-server member find`.
pub fn find_members(dir: &HqDir, phone: &str) -> Result<()> {
    let state = dir.load()?;
    let replica = dir.open_replica(&state.key)?;
    for m in replica.members_by_phone(phone)? {
        let cards: Vec<String> = replica
            .cards_of(&m)?
            .iter()
            .map(|c| format!("{} ({})", c.number, c.status.as_str()))
            .collect();
        println!("{m}\t{}", cards.join(", "));
    }
    Ok(())
}

/// `hq-server member merge`.
pub fn merge_members(dir: &HqDir, alias: &str, into: &str) -> Result<()> {
    let alias: chainsync::ids::MemberId = alias.parse().context("alias")?;
    let into: chainsync::ids::MemberId = into.parse().context("into")?;
    let state = dir.load()?;
    let mut replica = dir.open_replica(&state.key)?;
    let op = crate::loyalty::merge_op(&replica, &alias, &into)?;
    let committed = replica.commit_local(Topic::Members, vec![op], now_ms())?;
    println!(
        "{alias} merged into {into}: {} seq {}; points {}, stored value {}",
        committed.stream,
        committed.seq,
        replica.balance(&into, chainsync::model::LedgerAccount::Points)?,
        replica.balance(&into, chainsync::model::LedgerAccount::StoredValue)?
    );
    Ok(())
}

/// `hq-server card issue`.
pub fn issue_card(dir: &HqDir, number: &str, member: &str) -> Result<()> {
    let number: chainsync::ids::CardNo = number.parse().context("card")?;
    let member: chainsync::ids::MemberId = member.parse().context("member")?;
    let state = dir.load()?;
    let mut replica = dir.open_replica(&state.key)?;
    match crate::loyalty::card_issue_op(&replica, &number, &member, now_ms() as i64)? {
        Some(op) => {
            replica.commit_local(Topic::Members, vec![op], now_ms())?;
            println!("card {number} issued to {member}");
        }
        None => println!("card {number} is {member}'s already"),
    }
    Ok(())
}

/// `hq-server card show`.
pub fn show_card(dir: &HqDir, number: &str) -> Result<()> {
    let number: chainsync::ids::CardNo = number.parse().context("card")?;
    let state = dir.load()?;
    let replica = dir.open_replica(&state.key)?;
    match replica.card(&number)? {
        Some(card) => println!("{}", card.to_json()),
        None => anyhow::bail!("no card {number}"),
    }
    Ok(())
}

/// `hq-server card status`.
pub fn set_card_status(dir: &HqDir, number: &str, status: &str, by: Option<&str>) -> Result<()> {
    let number: chainsync::ids::CardNo = number.parse().context("card")?;
    let state = dir.load()?;
    let mut replica = dir.open_replica(&state.key)?;
    let ops = crate::loyalty::card_status_ops(&replica, &number, status, by, now_ms() as i64)?;
    let committed = replica.commit_local(Topic::Members, ops, now_ms())?;
    println!(
        "card {number} is {status}: {} seq {}",
        committed.stream, committed.seq
    );
    Ok(())
}

/// `hq-server restore --from FILE`: the backup over HQ's database (HQ stopped; the database as
/// it was backed up first), then the reclaim begins: HQ writes nothing until the stores have
/// returned what they hold of its history after the backup (`chainsync::replica` reclaim).
pub fn restore(dir: &HqDir, from: &Path) -> Result<()> {
    use chainsync::transport::backups;
    let state = dir.load()?;
    if crate::demo::http_text(state.config.api_listen, "GET", "/healthz", None, None).is_ok() {
        bail!(
            "HQ is running (it answers on {}): stop it first (`hq-server service stop`)",
            state.config.api_listen
        );
    }
    let node = backups::node_of(from)?;
    if node != NodeId::hq().as_str() {
        bail!("{} is a backup of {node}, not of HQ", from.display());
    }
    let db = dir.root.join("hq.db");
    let now = now_ms();
    if db.exists() {
        let before = backups::backup_now(
            &db,
            &dir.root.join(backups::BACKUP_FOLDER),
            "before-restore",
            now,
        )?;
        println!("the database as it was: {}", before.path.display());
    }
    backups::restore(from, &db)?;
    dir.open_replica(&state.key)?.begin_reclaim(now)?;
    println!(
        "restored {} from {}. HQ writes nothing until every store has returned what it holds \
         of HQ's history after the backup: start HQ, let the stores connect, and watch \
         `hq-server reclaim status`",
        db.display(),
        from.display()
    );
    Ok(())
}

/// `hq-server reclaim status`.
pub fn reclaim_status(dir: &HqDir) -> Result<()> {
    let state = dir.load()?;
    let status = dir.open_replica(&state.key)?.reclaim_status()?;
    match status.since_ms {
        Some(since) => println!("reclaiming since {since} (Unix ms): HQ writes nothing yet"),
        None => match status.ended_ms {
            Some(ended) => println!("not reclaiming; the last reclaim ended at {ended} (Unix ms)"),
            None => println!("not reclaiming"),
        },
    }
    let names = |ids: &[NodeId]| {
        ids.iter()
            .map(NodeId::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "stores returned ({}): {}",
        status.stores_returned.len(),
        names(&status.stores_returned)
    );
    println!(
        "stores waited for ({}): {}",
        status.stores_waiting.len(),
        names(&status.stores_waiting)
    );
    for (stream, held, claimed) in &status.streams_behind {
        println!("behind: {stream} HQ holds {held}, a store held {claimed}");
    }
    Ok(())
}

/// `hq-server reclaim finish`: HQ writes again, whatever the stores returned.
pub fn reclaim_finish(dir: &HqDir) -> Result<()> {
    let state = dir.load()?;
    let mut replica = dir.open_replica(&state.key)?;
    let status = replica.reclaim_status()?;
    if status.since_ms.is_none() {
        bail!("HQ is not reclaiming: nothing to finish");
    }
    replica.end_reclaim(now_ms())?;
    if !status.stores_waiting.is_empty() || !status.streams_behind.is_empty() {
        eprintln!(
            "warning: {} store(s) not heard from and {} stream(s) behind; a store holding later \
             HQ change sets will halt those streams (`hq-server report halts`)",
            status.stores_waiting.len(),
            status.streams_behind.len()
        );
    }
    println!("reclaim finished: HQ writes again");
    Ok(())
}
