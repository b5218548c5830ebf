//! Deterministic simulation of a whole chain: HQ and many stores in one process, driven from one
//! seed.
//!
//! Every node is the real thing (a SQLite replica in a temporary folder, the real session state
//! machines, the real frame codec); only the network and the clock are simulated. The network
//! behaves as QUIC does: frames of a connection arrive in order, after a random delay, or the
//! connection is lost (where a lossy line would make QUIC give up); as a fault beyond QUIC,
//! frames are also duplicated. Stores are partitioned and reconnect; nodes
//! crash (every bit of in-memory state dropped, the database reopened). Meanwhile stores sell,
//! take returns and voids, sign members up and edit them, earn and spend points and stored value,
//! and move stock, while HQ changes prices, promotions, products and members.
//!
//! Then the faults stop, and [`Sim::run`] checks that everything converged:
//! - every receipt every store acknowledged is at HQ exactly once, and nothing else is;
//! - every store holds exactly HQ's prices and promotions of its scopes, and HQ's catalog;
//! - member balances and profiles agree on every node, and balances equal the ledger written;
//! - HQ's stock for each store equals the store's own, and both equal the movements written;
//! - every replica's hash chains audit clean.
//!
//! A failure names the seed and the tail of the event log; `SIM_SEED=<seed>` replays it.
//!
//! Invariant: nothing here reads the wall clock, the OS random source or iterates a hash map, so
//! a seed always replays the same run.

use crate::{Chain, member, record, sku};
use chainsync::changeset::Op;
use chainsync::hlc::Hlc;
use chainsync::ids::{CardNo, MemberId, NodeId, RecordId, RegionId, Scope, Topic};
use chainsync::model::{
    ALL_DAYS, Allowance, Card, CardStatus, Combination, LedgerAccount, LedgerEntry, LedgerKind,
    LoyaltyPolicy, MemberEdit, MovementKind, Payment, PaymentMethod, PriceEntry, PriceKind,
    Product, ProfileField, Promotion, PromotionRule, Receipt, ReceiptLine, ReturnRecord, SpendAuth,
    SpendReward, SpendTier, StockMovement, Void,
};
use chainsync::protocol::frame::{Frame, FrameDecoder, encode_frame};
use chainsync::protocol::{HubSession, LeafSession, SessionError, subscribes};
use chainsync::replica::{Durability, HoldOutcome, HoldRequest, Replica};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// What one simulated run does.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub stores: usize,
    pub regions: usize,
    /// Steps of business with faults.
    pub fault_steps: usize,
    /// Most steps allowed for convergence once faults stop.
    pub heal_steps_max: usize,
}

impl SimConfig {
    /// The configuration CI runs: HQ and 50 stores in 4 regions.
    pub fn standard(seed: u64) -> Self {
        Self {
            seed,
            stores: 50,
            regions: 4,
            fault_steps: 300,
            heal_steps_max: 4_000,
        }
    }
}

/// Figures of a finished run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimSummary {
    pub receipts: usize,
    pub frames_sent: u64,
    pub frames_dropped: u64,
    pub frames_duplicated: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub heal_steps: usize,
    /// Takes from a card: held at HQ first, decided offline, refused.
    pub holds: u64,
    pub offline_takes: u64,
    pub refused_takes: u64,
    /// Cards overdrawn at the end (each within the allowances and listed at HQ).
    pub overdrawn: u64,
    pub merges: u64,
    pub cards: u64,
    /// blake3 over HQ's stream heads at the end: equal digests mean equal histories.
    pub hq_heads_digest: [u8; 32],
}

/// A failed run: the seed that reproduces it, what went wrong, and the last events.
#[derive(Debug)]
pub struct SimFailure {
    pub seed: u64,
    pub reason: String,
    pub log_tail: Vec<String>,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "simulation seed {} failed: {}", self.seed, self.reason)?;
        writeln!(
            f,
            "replay with: SIM_SEED={} cargo test -p chainsync-tests --test simulation",
            self.seed
        )?;
        writeln!(f, "last events:")?;
        for line in &self.log_tail {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// SplitMix64: small, fast, and the same on every platform forever.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            items.get(self.below(items.len() as u64) as usize)
        }
    }
}

const SKUS: u64 = 40;
const MEMBERS: u64 = 120;
/// Faults while they are on, in percent per frame or per step. A dropped frame loses its
/// connection.
const DROP_PERCENT: u64 = 4;
const DUPLICATE_PERCENT: u64 = 5;
const DELAY_MS_MAX: u64 = 400;
const POLL_INTERVAL_MS: u64 = 5_000;
const RECONNECT_DELAY_MS: u64 = 1_000;
/// Members whose cards take most ledger entries and merges.
const BUSY_MEMBERS: u64 = 6;
const LOG_LINES_KEPT: usize = 200;

struct Packet {
    deliver_at: u64,
    order: u64,
    conn: u64,
    to_hub: bool,
    /// Empty: the connection is lost here.
    bytes: Vec<u8>,
}

struct StoreNode {
    id: NodeId,
    region: RegionId,
    replica: Replica,
    session: Option<(u64, LeafSession)>,
    /// No connection before this time (partition, or backoff after a closed session).
    offline_until: u64,
    /// The POS's own counter for record ids (kept outside the node, as a till would).
    next_record: u64,
}

/// What the test knows was acknowledged, to check the nodes against.
#[derive(Default)]
struct Oracle {
    receipts: BTreeMap<NodeId, BTreeMap<String, Receipt>>,
    voided: BTreeSet<String>,
    stock: BTreeMap<(String, String), i64>,
    balances: BTreeMap<String, (i64, i64)>,
}

/// One simulated chain.
pub struct Sim {
    cfg: SimConfig,
    rng: Rng,
    now_ms: u64,
    chain: Chain,
    _dir: tempfile::TempDir,
    hq: Replica,
    hub_sessions: BTreeMap<u64, HubSession>,
    stores: Vec<StoreNode>,
    packets: Vec<Packet>,
    /// Last delivery time per connection and direction: frames of a connection stay in order.
    last_delivery: BTreeMap<(u64, bool), u64>,
    next_conn: u64,
    next_order: u64,
    hq_next_record: u64,
    faults: bool,
    oracle: Oracle,
    log: VecDeque<String>,
    summary: SimSummary,
}

type SimResult<T> = Result<T, String>;

fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Sim {
    /// Builds the chain for `cfg`.
    pub fn new(cfg: SimConfig) -> SimResult<Self> {
        let dir = tempfile::tempdir().map_err(err("tempdir"))?;
        let chain = Chain::new(dir.path(), cfg.stores, cfg.regions, Durability::Relaxed);
        let (hq, replicas) = chain.bootstrap(0);
        let stores = chain
            .stores
            .iter()
            .zip(replicas)
            .map(|(spec, replica)| StoreNode {
                id: spec.id.clone(),
                region: spec.region.clone(),
                replica,
                session: None,
                offline_until: 0,
                next_record: 1,
            })
            .collect();
        Ok(Self {
            rng: Rng::new(cfg.seed),
            cfg,
            now_ms: 1_000,
            chain,
            _dir: dir,
            hq,
            hub_sessions: BTreeMap::new(),
            stores,
            packets: Vec::new(),
            last_delivery: BTreeMap::new(),
            next_conn: 1,
            next_order: 0,
            hq_next_record: 1,
            faults: true,
            oracle: Oracle::default(),
            log: VecDeque::new(),
            summary: SimSummary::default(),
        })
    }

    /// Runs business with faults, heals, and checks convergence.
    pub fn run(cfg: SimConfig) -> Result<SimSummary, SimFailure> {
        let seed = cfg.seed;
        let mut sim = match Sim::new(cfg) {
            Ok(sim) => sim,
            Err(reason) => {
                return Err(SimFailure {
                    seed,
                    reason,
                    log_tail: vec![],
                });
            }
        };
        match sim.run_inner() {
            Ok(()) => Ok(sim.summary.clone()),
            Err(reason) => Err(SimFailure {
                seed,
                reason,
                log_tail: sim.log.iter().cloned().collect(),
            }),
        }
    }

    fn run_inner(&mut self) -> SimResult<()> {
        self.seed_catalog()?;
        for _ in 0..self.cfg.fault_steps {
            self.step()?;
        }
        self.faults = false;
        self.note("faults stop; healing".into());
        for store in &mut self.stores {
            store.offline_until = 0;
        }
        for i in 0..self.cfg.heal_steps_max {
            self.advance(50)?;
            if self.packets.is_empty() && self.converged()? {
                self.summary.heal_steps = i;
                return self.check();
            }
        }
        self.check().map_err(|e| {
            format!(
                "not converged after {} heal steps: {e}",
                self.cfg.heal_steps_max
            )
        })
    }

    fn note(&mut self, line: String) {
        if self.log.len() == LOG_LINES_KEPT {
            self.log.pop_front();
        }
        self.log.push_back(format!("t={} {line}", self.now_ms));
    }

    // ---------------------------------------------------------------- business

    fn seed_catalog(&mut self) -> SimResult<()> {
        let mut ops = Vec::new();
        for i in 0..SKUS {
            ops.push(Op::ProductUpsert(product(i, 1)));
        }
        self.hq_commit(Topic::Catalog, ops)?;
        let mut prices = Vec::new();
        for i in 0..SKUS {
            let id = self.hq_record();
            prices.push(Op::PriceUpsert(PriceEntry {
                id,
                sku: sku(&format!("sku{i}")),
                scope: Scope::Chain,
                kind: PriceKind::Retail,
                price_cents: 100 + i as i64 * 10,
                effective_from_ms: 0,
                effective_to_ms: None,
            }));
        }
        self.hq_commit(Topic::Prices(Scope::Chain), prices)?;
        let policy = LoyaltyPolicy {
            // Below the opening balances, so that the allowance, not only the balance a store
            // knows, is what bounds offline takes.
            offline: Allowance {
                stored_value_cents: 400,
                points: 30,
            },
            ..LoyaltyPolicy::default()
        };
        let mut ops = vec![Op::LoyaltyPolicy(policy)];
        // The busy cards start with a little money, so that stores contend for it from the start.
        for m in 0..BUSY_MEMBERS {
            let m = member(&format!("M{m:04}"));
            for (account, amount) in [
                (LedgerAccount::StoredValue, 1_500),
                (LedgerAccount::Points, 100),
            ] {
                ops.push(Op::Ledger(LedgerEntry {
                    id: self.hq_record(),
                    member: m.clone(),
                    account,
                    kind: LedgerKind::Adjusted,
                    amount,
                    receipt: None,
                    at_ms: 0,
                    auth: None,
                    tender: None,
                    note: "opening balance".into(),
                }));
                let balance = self.oracle.balances.entry(m.to_string()).or_default();
                match account {
                    LedgerAccount::Points => balance.0 += amount,
                    LedgerAccount::StoredValue => balance.1 += amount,
                }
            }
        }
        self.hq_commit(Topic::Members, ops)
    }

    fn step(&mut self) -> SimResult<()> {
        let roll = self.rng.below(100);
        match roll {
            0..=39 => self.store_sale()?,
            40..=44 => self.store_return()?,
            45..=47 => self.store_void()?,
            48..=55 => self.member_edit_at_store()?,
            56..=63 => self.ledger_entry()?,
            64..=69 => self.stock_movement()?,
            70..=75 => self.hq_price_change()?,
            76..=78 => self.hq_promotion_change()?,
            79 => self.hq_member_edit()?,
            80 => match self.rng.below(4) {
                0 => self.hq_member_merge()?,
                1 => self.hq_card_status()?,
                _ => self.store_card()?,
            },
            81 => self.hq_product_change()?,
            82..=84 => self.crash_store()?,
            85 => self.crash_hq()?,
            86..=88 => self.partition_store(),
            _ => {}
        }
        let dt = 1 + self.rng.below(150);
        self.advance(dt)
    }

    fn random_store(&mut self) -> usize {
        self.rng.below(self.stores.len() as u64) as usize
    }

    fn random_member(&mut self) -> MemberId {
        member(&format!("M{:04}", self.rng.below(MEMBERS)))
    }

    /// One of the few members whose cards see most of the money (so that balances run low and
    /// stores contend for them).
    fn busy_member(&mut self) -> MemberId {
        member(&format!("M{:04}", self.rng.below(BUSY_MEMBERS)))
    }

    fn store_commit(&mut self, i: usize, topic: Topic, ops: Vec<Op>) -> SimResult<()> {
        let now = self.now_ms;
        let store = &mut self.stores[i];
        let committed = store
            .replica
            .commit_local(topic, ops, now)
            .map_err(err("store commit"))?;
        let line = format!(
            "{} commits {} seq {}",
            store.id, committed.stream, committed.seq
        );
        let pushed = match &mut store.session {
            Some((conn, session)) => Some((*conn, session.local_commit(now, &store.replica))),
            None => None,
        };
        self.note(line);
        match pushed {
            Some((conn, Ok(frames))) => self.send_all(conn, true, frames),
            Some((_, Err(e))) => {
                self.close_store_session(i, &e);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn next_store_record(&mut self, i: usize, prefix: &str) -> RecordId {
        let store = &mut self.stores[i];
        let n = store.next_record;
        store.next_record += 1;
        record(&format!("{}-{prefix}{n}", store.id))
    }

    fn store_sale(&mut self) -> SimResult<()> {
        let i = self.random_store();
        let id = self.next_store_record(i, "R");
        let line_count = 1 + self.rng.below(3);
        let mut lines = Vec::new();
        for _ in 0..line_count {
            let s = self.rng.below(SKUS);
            lines.push(ReceiptLine::plain(
                sku(&format!("sku{s}")),
                1 + self.rng.below(3) as i64,
                100 + s as i64 * 10,
            ));
        }
        let member = self.rng.chance(40).then(|| self.random_member());
        let store_id = self.stores[i].id.clone();
        let receipt = Receipt {
            id: id.clone(),
            store: store_id.clone(),
            sold_at_ms: self.now_ms as i64,
            member,
            payments: vec![Payment {
                method: PaymentMethod::Card,
                amount_cents: 0,
            }],
            lines,
            pricing: chainsync::model::PricingBasis::unknown(self.now_ms as i64),
        };
        self.store_commit(i, Topic::Sales, vec![Op::Receipt(receipt.clone())])?;
        for line in &receipt.lines {
            *self
                .oracle
                .stock
                .entry((store_id.to_string(), line.sku.to_string()))
                .or_default() -= line.qty;
        }
        self.oracle
            .receipts
            .entry(store_id)
            .or_default()
            .insert(id.to_string(), receipt);
        Ok(())
    }

    fn any_receipt(&mut self) -> Option<Receipt> {
        let all: Vec<&Receipt> = self
            .oracle
            .receipts
            .values()
            .flat_map(|m| m.values())
            .collect();
        let n = all.len() as u64;
        if n == 0 {
            return None;
        }
        all.get(self.rng.below(n) as usize).map(|r| (*r).clone())
    }

    fn store_return(&mut self) -> SimResult<()> {
        // Any store may take back goods bought at any store, even one whose receipt it never saw.
        let Some(original) = self.any_receipt() else {
            return Ok(());
        };
        let i = self.random_store();
        let id = self.next_store_record(i, "T");
        let store_id = self.stores[i].id.clone();
        let lines: Vec<ReceiptLine> = original.lines.iter().take(1).cloned().collect();
        let ret = ReturnRecord {
            id,
            store: store_id.clone(),
            original: original.id.clone(),
            at_ms: self.now_ms as i64,
            refunds: vec![Payment {
                method: PaymentMethod::Cash,
                amount_cents: original.total_cents(),
            }],
            lines: lines.clone(),
            unverified: false,
        };
        self.store_commit(i, Topic::Sales, vec![Op::Return(ret)])?;
        for line in &lines {
            *self
                .oracle
                .stock
                .entry((store_id.to_string(), line.sku.to_string()))
                .or_default() += line.qty;
        }
        Ok(())
    }

    fn store_void(&mut self) -> SimResult<()> {
        let i = self.random_store();
        let store_id = self.stores[i].id.clone();
        let candidates: Vec<Receipt> = self
            .oracle
            .receipts
            .get(&store_id)
            .map(|m| {
                m.values()
                    .filter(|r| !self.oracle.voided.contains(r.id.as_str()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let Some(original) = self.rng.pick(&candidates).cloned() else {
            return Ok(());
        };
        let id = self.next_store_record(i, "V");
        let void = Void {
            id,
            store: store_id.clone(),
            original: original.id.clone(),
            at_ms: self.now_ms as i64,
            reason: "customer changed mind".into(),
        };
        self.store_commit(i, Topic::Sales, vec![Op::Void(void)])?;
        self.oracle.voided.insert(original.id.to_string());
        for line in &original.lines {
            *self
                .oracle
                .stock
                .entry((store_id.to_string(), line.sku.to_string()))
                .or_default() += line.qty;
        }
        Ok(())
    }

    fn member_fields(&mut self) -> Vec<(ProfileField, String)> {
        let mut fields = Vec::new();
        let v = self.rng.below(1_000);
        for field in [
            ProfileField::Name,
            ProfileField::Phone,
            ProfileField::Email,
            ProfileField::Level,
        ] {
            if self.rng.chance(50) {
                fields.push((field, format!("{field:?}-{v}")));
            }
        }
        if fields.is_empty() {
            fields.push((ProfileField::Name, format!("Name-{v}")));
        }
        fields
    }

    fn member_edit_at_store(&mut self) -> SimResult<()> {
        let i = self.random_store();
        let member = self.random_member();
        let fields = self.member_fields();
        // hlc left default: the change set's clock stamps it.
        let edit = MemberEdit {
            member,
            hlc: Hlc::default(),
            fields,
        };
        self.store_commit(i, Topic::Members, vec![Op::MemberEdit(edit)])
    }

    fn ledger_entry(&mut self) -> SimResult<()> {
        let i = self.random_store();
        let member = self.busy_member();
        let id = self.next_store_record(i, "L");
        let (account, kind, amount) = match self.rng.below(4) {
            0 => (
                LedgerAccount::Points,
                LedgerKind::Earned,
                1 + self.rng.below(100) as i64,
            ),
            1 => (
                LedgerAccount::Points,
                LedgerKind::Redeemed,
                -(1 + self.rng.below(50) as i64),
            ),
            2 => (
                LedgerAccount::StoredValue,
                LedgerKind::ToppedUp,
                500 + self.rng.below(5_000) as i64,
            ),
            _ => (
                LedgerAccount::StoredValue,
                LedgerKind::Spent,
                -(1 + self.rng.below(2_000) as i64),
            ),
        };
        let auth = if amount < 0 {
            match self.authorise(i, &member, account, -amount, &id)? {
                Some(auth) => Some(auth),
                None => return Ok(()),
            }
        } else {
            None
        };
        let entry = LedgerEntry {
            receipt: (kind == LedgerKind::Earned).then(|| record(&format!("{id}-sale"))),
            id,
            member: member.clone(),
            account,
            kind,
            amount,
            at_ms: self.now_ms as i64,
            auth,
            tender: (kind == LedgerKind::ToppedUp).then_some(PaymentMethod::Cash),
            note: String::new(),
        };
        self.store_commit(i, Topic::Members, vec![Op::Ledger(entry)])?;
        let balance = self.oracle.balances.entry(member.to_string()).or_default();
        match account {
            LedgerAccount::Points => balance.0 += amount,
            LedgerAccount::StoredValue => balance.1 += amount,
        }
        Ok(())
    }

    /// How store `i` may take `amount` from `member`'s account, as the POS decides it: a hold at
    /// HQ while its session is open (HQ's replica, in its transaction), else the offline
    /// allowance from the store's own replica. `None`: refused (or the store died between the
    /// hold and the capture, leaving the hold to expire).
    fn authorise(
        &mut self,
        i: usize,
        member: &MemberId,
        account: LedgerAccount,
        amount: i64,
        id: &RecordId,
    ) -> SimResult<Option<SpendAuth>> {
        let online = self.stores[i]
            .session
            .as_ref()
            .is_some_and(|(_, s)| s.is_open());
        if online {
            let hold = HoldRequest {
                id: record(&format!("{id}-H")),
                member: member.clone(),
                account,
                amount,
                card: None,
            };
            let store = self.stores[i].id.clone();
            let outcome = self
                .hq
                .place_hold(&store, &hold, self.now_ms)
                .map_err(err("hold"))?;
            self.note(format!("{store} holds {amount} of {member}: {outcome:?}"));
            return Ok(match outcome {
                HoldOutcome::Granted { .. } if self.rng.chance(5) => {
                    self.crash_store_at(i);
                    None
                }
                HoldOutcome::Granted { .. } => {
                    self.summary.holds += 1;
                    Some(SpendAuth::Held(hold.id))
                }
                HoldOutcome::Refused { .. } => {
                    self.summary.refused_takes += 1;
                    None
                }
            });
        }
        let r = &self.stores[i].replica;
        let known = r.balance(member, account).map_err(err("balance"))?;
        let allowance = r
            .offline_allowance_of(member)
            .map_err(err("allowance"))?
            .of(account);
        let before = r
            .offline_taken_unacked(member, account)
            .map_err(err("offline takes"))?;
        Ok(
            match chainsync::loyalty::offline_decision(known, allowance, before, amount) {
                Ok(auth) => {
                    self.summary.offline_takes += 1;
                    Some(auth)
                }
                Err(_) => {
                    self.summary.refused_takes += 1;
                    None
                }
            },
        )
    }

    fn stock_movement(&mut self) -> SimResult<()> {
        let i = self.random_store();
        let id = self.next_store_record(i, "K");
        let store_id = self.stores[i].id.clone();
        let s = sku(&format!("sku{}", self.rng.below(SKUS)));
        let (kind, delta) = match self.rng.below(3) {
            0 => (MovementKind::Received, 10 + self.rng.below(40) as i64),
            1 => (MovementKind::CountAdjustment, self.rng.below(7) as i64 - 3),
            _ => (MovementKind::TransferOut, -(1 + self.rng.below(5) as i64)),
        };
        let movement = StockMovement {
            id,
            store: store_id.clone(),
            sku: s.clone(),
            kind,
            qty_delta: delta,
            reference: "sim".into(),
            at_ms: self.now_ms as i64,
        };
        self.store_commit(i, Topic::Inventory, vec![Op::Stock(movement)])?;
        *self
            .oracle
            .stock
            .entry((store_id.to_string(), s.to_string()))
            .or_default() += delta;
        Ok(())
    }

    fn hq_record(&mut self) -> RecordId {
        let n = self.hq_next_record;
        self.hq_next_record += 1;
        RecordId::minted(&NodeId::hq(), n)
    }

    fn random_scope(&mut self) -> Scope {
        match self.rng.below(3) {
            0 => Scope::Chain,
            1 => Scope::Region(crate::region(&format!(
                "r{}",
                self.rng.below(self.cfg.regions as u64)
            ))),
            _ => {
                let i = self.random_store();
                Scope::Store(self.stores[i].id.clone())
            }
        }
    }

    fn hq_commit(&mut self, topic: Topic, ops: Vec<Op>) -> SimResult<()> {
        let committed = self
            .hq
            .commit_local(topic, ops, self.now_ms)
            .map_err(err("HQ commit"))?;
        self.note(format!(
            "hq commits {} seq {}",
            committed.stream, committed.seq
        ));
        let moved = [(committed.stream, committed.seq)];
        let notes: Vec<(u64, Frame)> = self
            .hub_sessions
            .iter()
            .filter_map(|(conn, s)| s.notify(&moved).map(|f| (*conn, f)))
            .collect();
        for (conn, frame) in notes {
            self.send(conn, false, &frame)?;
        }
        Ok(())
    }

    fn hq_price_change(&mut self) -> SimResult<()> {
        let scope = self.random_scope();
        let existing: Vec<PriceEntry> = self
            .hq
            .price_entries()
            .map_err(err("HQ prices"))?
            .into_iter()
            .filter(|e| e.scope == scope)
            .collect();
        let op = if self.rng.chance(20) && !existing.is_empty() {
            let victim = self
                .rng
                .pick(&existing)
                .map(|e| e.id.clone())
                .ok_or("no price")?;
            Op::PriceRemove { id: victim }
        } else {
            let id = match self.rng.pick(&existing) {
                Some(e) if self.rng.chance(30) => e.id.clone(),
                _ => self.hq_record(),
            };
            let from = self.now_ms as i64 + self.rng.below(10_000) as i64 - 5_000;
            let kind = if self.rng.chance(25) {
                PriceKind::Member
            } else {
                PriceKind::Retail
            };
            Op::PriceUpsert(PriceEntry {
                id,
                sku: sku(&format!("sku{}", self.rng.below(SKUS))),
                scope: scope.clone(),
                kind,
                price_cents: 50 + self.rng.below(500) as i64,
                effective_from_ms: from,
                effective_to_ms: self.rng.chance(30).then_some(from + 60_000),
            })
        };
        self.hq_commit(Topic::Prices(scope), vec![op])
    }

    fn hq_promotion_change(&mut self) -> SimResult<()> {
        let scope = self.random_scope();
        let existing: Vec<Promotion> = self
            .hq
            .promotions()
            .map_err(err("HQ promotions"))?
            .into_iter()
            .filter(|p| p.scope == scope)
            .collect();
        let op = if self.rng.chance(25) && !existing.is_empty() {
            Op::PromotionRemove {
                id: self
                    .rng
                    .pick(&existing)
                    .map(|p| p.id.clone())
                    .ok_or("no promotion")?,
            }
        } else {
            let rule = match self.rng.below(5) {
                0 => PromotionRule::PercentOff {
                    basis_points: 500 + self.rng.below(2_000) as u32,
                },
                1 => PromotionRule::AmountOff {
                    cents: 10 + self.rng.below(100) as i64,
                },
                2 => PromotionRule::FixedPrice { cents: 99 },
                3 => PromotionRule::BuyNGetM {
                    buy: 2,
                    get: 1,
                    across_skus: false,
                },
                _ => PromotionRule::SpendThreshold {
                    tiers: vec![SpendTier {
                        spend_cents: 5_000,
                        reward: SpendReward::AmountOff { cents: 500 },
                    }],
                },
            };
            let id = self.hq_record();
            Op::PromotionUpsert(Promotion {
                name: format!("promo {id}"),
                id,
                scope: scope.clone(),
                rule,
                skus: vec![sku(&format!("sku{}", self.rng.below(SKUS)))],
                categories: vec![],
                mode: Combination::BestPrice,
                priority: 0,
                member_only: self.rng.chance(30),
                member_levels: vec![],
                birthday_only: self.rng.chance(10),
                starts_at_ms: self.now_ms as i64,
                ends_at_ms: Some(self.now_ms as i64 + 86_400_000),
                local_dates: None,
                days_of_week: ALL_DAYS,
                hours: self.rng.chance(20).then_some((17, 19)),
                max_units_per_receipt: self.rng.chance(30).then_some(2),
                allocations: vec![],
            })
        };
        self.hq_commit(Topic::Promotions(scope), vec![op])
    }

    fn hq_member_edit(&mut self) -> SimResult<()> {
        let member = self.random_member();
        let fields = self.member_fields();
        let mut ops = vec![Op::MemberEdit(MemberEdit {
            member: member.clone(),
            hlc: Hlc::default(),
            fields,
        })];
        if self.rng.chance(50) {
            ops.push(Op::MemberAllowance {
                member,
                allowance: Some(Allowance {
                    stored_value_cents: self.rng.below(10) as i64 * 1_000,
                    points: 0,
                }),
            });
        }
        self.hq_commit(Topic::Members, ops)
    }

    fn hq_product_change(&mut self) -> SimResult<()> {
        let i = self.rng.below(SKUS);
        let version = self.rng.below(1_000);
        self.hq_commit(Topic::Catalog, vec![Op::ProductUpsert(product(i, version))])
    }

    // ---------------------------------------------------------------- faults

    /// HQ merges two members it knows (neither merged away already).
    fn hq_member_merge(&mut self) -> SimResult<()> {
        let (a, b) = (self.busy_member(), self.busy_member());
        let canonical = |m: &MemberId| self.hq.canonical_member(m).map_err(err("canonical"));
        if a == b || canonical(&a)? != a || canonical(&b)? != b {
            return Ok(());
        }
        let known = |m: &MemberId| {
            self.hq
                .member_facts(m)
                .map(|f| f.known)
                .map_err(err("facts"))
        };
        if !known(&a)? || !known(&b)? {
            return Ok(());
        }
        self.summary.merges += 1;
        self.hq_commit(
            Topic::Members,
            vec![Op::MemberMerge {
                alias: b,
                survivor: a,
            }],
        )
    }

    fn random_card(&mut self) -> CardNo {
        format!("C{}", self.rng.below(MEMBERS / 2))
            .parse()
            .expect("card number")
    }

    /// A store issues a card, or reports one lost (sometimes with a replacement).
    fn store_card(&mut self) -> SimResult<()> {
        let i = self.random_store();
        let number = self.random_card();
        let op = match self.stores[i].replica.card(&number).map_err(err("card"))? {
            None => {
                self.summary.cards += 1;
                let member = self.random_member();
                vec![Op::CardIssue(Card {
                    number,
                    member,
                    issued_at_ms: self.now_ms as i64,
                })]
            }
            Some(card) => {
                let by = self.random_card();
                let status = if by != number && self.rng.chance(50) {
                    CardStatus::Replaced { by }
                } else {
                    CardStatus::Lost
                };
                vec![Op::CardStatus {
                    number: card.number,
                    status,
                    hlc: Hlc::default(),
                }]
            }
        };
        self.store_commit(i, Topic::Members, op)
    }

    /// HQ freezes, unfreezes or cancels a card.
    fn hq_card_status(&mut self) -> SimResult<()> {
        let number = self.random_card();
        let status = match self.rng.below(3) {
            0 => CardStatus::Frozen,
            1 => CardStatus::Active,
            _ => CardStatus::Cancelled,
        };
        self.hq_commit(
            Topic::Members,
            vec![Op::CardStatus {
                number,
                status,
                hlc: Hlc::default(),
            }],
        )
    }

    fn crash_store(&mut self) -> SimResult<()> {
        let i = self.random_store();
        self.crash_store_at(i);
        Ok(())
    }

    fn crash_store_at(&mut self, i: usize) {
        let id = self.stores[i].id.clone();
        self.close_store_session(i, &SessionError::Storage("crashed".into()));
        // Drop every bit of in-memory state: the replica (connection, clock, caches) is closed
        // and opened again from its file.
        let replica = self.chain.open_store(&id);
        self.stores[i].replica = replica;
        self.summary.crashes += 1;
        self.note(format!("{id} crashes and restarts"));
    }

    fn crash_hq(&mut self) -> SimResult<()> {
        let conns: Vec<u64> = self.hub_sessions.keys().copied().collect();
        for conn in conns {
            self.close_conn(conn);
        }
        self.hq = self.chain.open_hq();
        self.summary.crashes += 1;
        self.note("hq crashes and restarts".into());
        Ok(())
    }

    fn partition_store(&mut self) {
        let i = self.random_store();
        let until = self.now_ms + 1_000 + self.rng.below(20_000);
        self.close_store_session(i, &SessionError::Storage("partitioned".into()));
        self.stores[i].offline_until = until;
        self.summary.partitions += 1;
        let id = self.stores[i].id.clone();
        self.note(format!("{id} partitioned until {until}"));
    }

    fn close_store_session(&mut self, i: usize, why: &SessionError) {
        if let Some((conn, _)) = self.stores[i].session.take() {
            self.hub_sessions.remove(&conn);
            let id = self.stores[i].id.clone();
            self.note(format!("{id} conn {conn} closed: {why}"));
        }
        self.stores[i].offline_until = self.stores[i]
            .offline_until
            .max(self.now_ms + RECONNECT_DELAY_MS);
    }

    fn close_conn(&mut self, conn: u64) {
        self.hub_sessions.remove(&conn);
        self.last_delivery.retain(|(c, _), _| *c != conn);
        if let Some(i) = self
            .stores
            .iter()
            .position(|s| s.session.as_ref().is_some_and(|(c, _)| *c == conn))
        {
            self.close_store_session(i, &SessionError::Storage("connection lost".into()));
        }
    }

    // ---------------------------------------------------------------- network

    fn send_all(&mut self, conn: u64, to_hub: bool, frames: Vec<Frame>) -> SimResult<()> {
        for frame in frames {
            self.send(conn, to_hub, &frame)?;
        }
        Ok(())
    }

    fn send(&mut self, conn: u64, to_hub: bool, frame: &Frame) -> SimResult<()> {
        let bytes = encode_frame(frame).map_err(err("encode"))?;
        self.summary.frames_sent += 1;
        let (copies, bytes) = if self.faults && self.rng.chance(DROP_PERCENT) {
            // The frame never arrives, and neither does anything after it: the connection is
            // lost at the moment the frame would have arrived.
            self.summary.frames_dropped += 1;
            (1, Vec::new())
        } else if self.faults && self.rng.chance(DUPLICATE_PERCENT) {
            self.summary.frames_duplicated += 1;
            (2, bytes)
        } else {
            (1, bytes)
        };
        for _ in 0..copies {
            let delay = if self.faults {
                1 + self.rng.below(DELAY_MS_MAX)
            } else {
                1 + self.rng.below(20)
            };
            let last = self.last_delivery.entry((conn, to_hub)).or_insert(0);
            let deliver_at = (self.now_ms + delay).max(*last);
            *last = deliver_at;
            self.packets.push(Packet {
                deliver_at,
                order: self.next_order,
                conn,
                to_hub,
                bytes: bytes.clone(),
            });
            self.next_order += 1;
        }
        Ok(())
    }

    /// Moves time forward by `dt_ms`, delivering frames, firing timers and reconnecting.
    fn advance(&mut self, dt_ms: u64) -> SimResult<()> {
        let until = self.now_ms + dt_ms;
        loop {
            let next = self
                .packets
                .iter()
                .filter(|p| p.deliver_at <= until)
                .min_by_key(|p| (p.deliver_at, p.order));
            let Some(order) = next.map(|p| p.order) else {
                break;
            };
            let pos = self
                .packets
                .iter()
                .position(|p| p.order == order)
                .ok_or("packet vanished")?;
            let packet = self.packets.swap_remove(pos);
            self.now_ms = self.now_ms.max(packet.deliver_at);
            self.deliver(packet)?;
        }
        self.now_ms = until;
        self.timers()?;
        self.reconnect()
    }

    fn deliver(&mut self, packet: Packet) -> SimResult<()> {
        if packet.bytes.is_empty() {
            self.note(format!("conn {} lost", packet.conn));
            self.close_conn(packet.conn);
            return Ok(());
        }
        let mut decoder = FrameDecoder::default();
        decoder.push(&packet.bytes).map_err(err("decode"))?;
        let frame = decoder
            .next_frame()
            .map_err(err("decode"))?
            .ok_or("no frame in packet")?;
        let now = self.now_ms;
        if packet.to_hub {
            let Some(session) = self.hub_sessions.get_mut(&packet.conn) else {
                return Ok(());
            };
            match session.handle(now, frame, &mut self.hq) {
                Ok(out) => {
                    for line in &out.rejected {
                        self.note(format!("hq refused on conn {}: {line}", packet.conn));
                    }
                    self.send_all(packet.conn, false, out.frames)?;
                    if !out.moved.is_empty() {
                        let notes: Vec<(u64, Frame)> = self
                            .hub_sessions
                            .iter()
                            .filter(|(c, _)| **c != packet.conn)
                            .filter_map(|(c, s)| s.notify(&out.moved).map(|f| (*c, f)))
                            .collect();
                        for (conn, frame) in notes {
                            self.send(conn, false, &frame)?;
                        }
                    }
                }
                Err(e) => {
                    self.note(format!("hq ends conn {}: {e}", packet.conn));
                    self.close_conn(packet.conn);
                }
            }
        } else {
            let Some(i) = self
                .stores
                .iter()
                .position(|s| s.session.as_ref().is_some_and(|(c, _)| *c == packet.conn))
            else {
                return Ok(());
            };
            let store = &mut self.stores[i];
            let Some((_, session)) = store.session.as_mut() else {
                return Ok(());
            };
            match session.handle(now, frame, &mut store.replica) {
                Ok(frames) => self.send_all(packet.conn, true, frames)?,
                Err(e) => {
                    let id = self.stores[i].id.clone();
                    self.note(format!("{id} ends conn {}: {e}", packet.conn));
                    self.close_conn(packet.conn);
                }
            }
        }
        Ok(())
    }

    fn timers(&mut self) -> SimResult<()> {
        let now = self.now_ms;
        for i in 0..self.stores.len() {
            let store = &mut self.stores[i];
            let Some((conn, session)) = store.session.as_mut() else {
                continue;
            };
            if session.poll_timeout().is_none_or(|t| t > now) {
                continue;
            }
            let conn = *conn;
            match session.handle_timeout(now, &store.replica) {
                Ok(frames) => self.send_all(conn, true, frames)?,
                Err(e) => {
                    let id = self.stores[i].id.clone();
                    self.note(format!("{id} gives up on conn {conn}: {e}"));
                    self.close_conn(conn);
                }
            }
        }
        Ok(())
    }

    fn reconnect(&mut self) -> SimResult<()> {
        let now = self.now_ms;
        for i in 0..self.stores.len() {
            if self.stores[i].session.is_some() || self.stores[i].offline_until > now {
                continue;
            }
            let conn = self.next_conn;
            self.next_conn += 1;
            let nonce = self.rng.next_u64().to_le_bytes().repeat(4);
            let nonce: [u8; 32] = nonce.try_into().map_err(|_| "nonce")?;
            // Both ends derive the same binding from the connection, as TLS exporters would.
            let binding = format!("conn-{conn}").into_bytes();
            let store = &mut self.stores[i];
            let mut session = LeafSession::new(
                store.id.clone(),
                self.chain.store_key(&store.id),
                binding.clone(),
                POLL_INTERVAL_MS,
            );
            let frames = session.start(now, &store.replica).map_err(err("start"))?;
            store.session = Some((conn, session));
            self.hub_sessions
                .insert(conn, HubSession::new(nonce, binding));
            let id = self.stores[i].id.clone();
            self.note(format!("{id} connects as conn {conn}"));
            self.send_all(conn, true, frames)?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- checks

    /// Cheap test for "nothing left to exchange": every outbox acknowledged and every followed
    /// stream at HQ's head.
    fn converged(&self) -> SimResult<bool> {
        let hq_heads: BTreeMap<_, _> = self
            .hq
            .heads()
            .map_err(err("HQ heads"))?
            .into_iter()
            .map(|(s, h)| (s, h.seq))
            .collect();
        for store in &self.stores {
            for (stream, acked, head) in store.replica.own_streams().map_err(err("own streams"))? {
                if acked < head || hq_heads.get(&stream).copied().unwrap_or(0) < head {
                    return Ok(false);
                }
            }
            let mine: BTreeMap<_, _> = store
                .replica
                .heads()
                .map_err(err("heads"))?
                .into_iter()
                .map(|(s, h)| (s, h.seq))
                .collect();
            for (stream, seq) in &hq_heads {
                if subscribes(
                    &chainsync::ids::Place::new(store.id.clone(), store.region.clone()),
                    chainsync::model::StoreMode::Realtime,
                    stream,
                ) && mine.get(stream).copied().unwrap_or(0) != *seq
                {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    fn check(&mut self) -> SimResult<()> {
        let hq = &self.hq;
        hq.audit().map_err(err("HQ audit"))?;
        let hq_prices = hq.price_entries().map_err(err("prices"))?;
        let hq_promos = hq.promotions().map_err(err("promotions"))?;
        let hq_balances = hq.balances().map_err(err("balances"))?;
        let hq_fields = hq.member_fields().map_err(err("member fields"))?;
        let hq_cards = hq.all_cards().map_err(err("cards"))?;
        // Any card below zero is within the allowances the stores applied offline, one per
        // store that took from it offline, and HQ lists it.
        let exceptions = hq.card_exceptions().map_err(err("exceptions"))?;
        for (m, points, value) in &hq_balances {
            for (account, balance) in [
                (LedgerAccount::Points, *points),
                (LedgerAccount::StoredValue, *value),
            ] {
                if balance >= 0 {
                    continue;
                }
                self.summary.overdrawn += 1;
                let bound: i64 = hq
                    .connection()
                    .query_row(
                        "SELECT coalesce(sum(a), 0) FROM (
                           SELECT max(l.offline_allowance) AS a
                           FROM ledger l LEFT JOIN member_aliases x ON x.alias = l.member
                           WHERE coalesce(x.survivor, l.member) = ?1 AND l.account = ?2
                             AND l.offline_allowance IS NOT NULL
                           GROUP BY l.origin)",
                        rusqlite::params![
                            m,
                            if account == LedgerAccount::Points {
                                0
                            } else {
                                1
                            }
                        ],
                        |r| r.get(0),
                    )
                    .map_err(err("allowances applied"))?;
                if -balance > bound {
                    return Err(format!(
                        "{m} {account:?} is {balance}, beyond the allowances stores applied ({bound})"
                    ));
                }
                if !exceptions
                    .iter()
                    .any(|x| x.member == *m && x.account == account)
                {
                    return Err(format!(
                        "{m} {account:?} is {balance} and HQ does not list it"
                    ));
                }
            }
        }
        let mut total_receipts = 0usize;
        // Balances at HQ equal the ledger written (a merged member's under its survivor).
        let mut merged: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for (m, (p, v)) in &self.oracle.balances {
            let survivor = hq
                .canonical_member(&member(m))
                .map_err(err("canonical"))?
                .to_string();
            let slot = merged.entry(survivor).or_default();
            slot.0 += p;
            slot.1 += v;
        }
        let oracle_balances: Vec<(String, i64, i64)> = merged
            .iter()
            .map(|(m, (p, v))| (m.clone(), *p, *v))
            .collect();
        if hq_balances != oracle_balances {
            return Err(format!(
                "HQ balances differ from the ledger written: {}",
                first_diff(&hq_balances, &oracle_balances)
            ));
        }
        for store in &self.stores {
            let r = &store.replica;
            r.audit().map_err(err("store audit"))?;
            // Receipts: exactly the acknowledged ones, at HQ and at the store.
            let expected: Vec<String> = self
                .oracle
                .receipts
                .get(&store.id)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            total_receipts += expected.len();
            let at_hq = hq.receipt_ids(&store.id).map_err(err("receipts"))?;
            if at_hq != expected {
                return Err(format!(
                    "{}: HQ receipts differ: {}",
                    store.id,
                    first_diff(&at_hq, &expected)
                ));
            }
            let at_store = r.receipt_ids(&store.id).map_err(err("receipts"))?;
            if at_store != expected {
                return Err(format!(
                    "{}: store receipts differ: {}",
                    store.id,
                    first_diff(&at_store, &expected)
                ));
            }
            // Prices and promotions: exactly those of its scopes.
            let want: Vec<&PriceEntry> = hq_prices
                .iter()
                .filter(|e| {
                    chainsync::ids::Place::new(store.id.clone(), store.region.clone())
                        .covers(&e.scope)
                })
                .collect();
            let have = r.price_entries().map_err(err("prices"))?;
            if have.iter().collect::<Vec<_>>() != want {
                return Err(format!(
                    "{}: prices differ ({} held, {} expected)",
                    store.id,
                    have.len(),
                    want.len()
                ));
            }
            let want: Vec<&Promotion> = hq_promos
                .iter()
                .filter(|p| {
                    chainsync::ids::Place::new(store.id.clone(), store.region.clone())
                        .covers(&p.scope)
                })
                .collect();
            let have = r.promotions().map_err(err("promotions"))?;
            if have.iter().collect::<Vec<_>>() != want {
                return Err(format!(
                    "{}: promotions differ ({} held, {} expected)",
                    store.id,
                    have.len(),
                    want.len()
                ));
            }
            // Members: same balances and profiles everywhere.
            let balances = r.balances().map_err(err("balances"))?;
            if balances != hq_balances {
                return Err(format!(
                    "{}: balances differ from HQ: {}",
                    store.id,
                    first_diff(&balances, &hq_balances)
                ));
            }
            let cards = r.all_cards().map_err(err("cards"))?;
            if cards != hq_cards {
                return Err(format!(
                    "{}: cards differ from HQ: {}",
                    store.id,
                    first_diff(&cards, &hq_cards)
                ));
            }
            let fields = r.member_fields().map_err(err("member fields"))?;
            if fields != hq_fields {
                return Err(format!(
                    "{}: member profiles differ from HQ: {}",
                    store.id,
                    first_diff(&fields, &hq_fields)
                ));
            }
            // Stock: HQ's figure for the store equals the store's, and both equal what was written.
            let hq_stock = hq.stock_rows(Some(&store.id)).map_err(err("stock"))?;
            let own_stock = r.stock_rows(Some(&store.id)).map_err(err("stock"))?;
            if hq_stock != own_stock {
                return Err(format!("{}: HQ stock differs from the store's", store.id));
            }
            for row in &own_stock {
                let want = self
                    .oracle
                    .stock
                    .get(&(row.store.clone(), row.sku.clone()))
                    .copied()
                    .unwrap_or(0);
                if row.qty != want {
                    return Err(format!(
                        "{}: stock of {} is {}, movements say {want}",
                        store.id, row.sku, row.qty
                    ));
                }
            }
            for ((s, sku), qty) in &self.oracle.stock {
                if s == store.id.as_str()
                    && *qty != 0
                    && !own_stock.iter().any(|row| &row.sku == sku)
                {
                    return Err(format!("{s}: no stock row for {sku}, movements say {qty}"));
                }
            }
        }
        let hq_count = hq.receipt_count().map_err(err("count"))? as usize;
        if hq_count != total_receipts {
            return Err(format!(
                "HQ holds {hq_count} receipts, stores acknowledged {total_receipts}"
            ));
        }
        self.summary.receipts = total_receipts;
        let mut digest = blake3::Hasher::new();
        for (stream, head) in hq.heads().map_err(err("HQ heads"))? {
            digest.update(stream.to_string().as_bytes());
            digest.update(&head.seq.to_le_bytes());
            digest.update(&head.hash);
        }
        self.summary.hq_heads_digest = *digest.finalize().as_bytes();
        Ok(())
    }
}

fn product(i: u64, version: u64) -> Product {
    Product {
        sku: sku(&format!("sku{i}")),
        name: format!("Product {i} v{version}"),
        category: format!("cat{}", i % 5),
        barcodes: vec![format!("400000{i:06}")],
        unit_cost_cents: 50 + i as i64,
        active: true,
    }
}

fn first_diff<T: std::fmt::Debug + PartialEq>(a: &[T], b: &[T]) -> String {
    let at = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    format!(
        "{} vs {} items; first difference at {at}: {:?} vs {:?}",
        a.len(),
        b.len(),
        a.get(at),
        b.get(at)
    )
}
