-- chainsync replica schema, version 4. Applied once by Replica::open.
-- Replication state: the log of every stream this node keeps, and where each stands.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE streams (
    id               INTEGER PRIMARY KEY,
    name             TEXT    NOT NULL UNIQUE,  -- origin/topic, e.g. S017/sales
    origin           TEXT    NOT NULL,
    priority         INTEGER NOT NULL,         -- Topic::priority: delivery order
    head_seq         INTEGER NOT NULL DEFAULT 0,
    head_hash        BLOB    NOT NULL,
    base_seq         INTEGER NOT NULL DEFAULT 0, -- the log holds seq > base_seq (a snapshot covers the rest)
    hub_acked_seq    INTEGER NOT NULL DEFAULT 0, -- own streams: what the hub has made durable
    last_applied_ms  INTEGER,                  -- local time the head last moved (freshness)
    halted_reason    TEXT,                     -- last integrity failure, cleared by the next good change set
    halted_kind      TEXT,                     -- validate::HaltKind::as_str of it
    halted_at_ms     INTEGER                   -- when it first halted (kept while it stays halted)
);
CREATE TABLE log (
    stream INTEGER NOT NULL REFERENCES streams(id),
    seq    INTEGER NOT NULL,
    body   BLOB    NOT NULL,
    sig    BLOB    NOT NULL,
    PRIMARY KEY (stream, seq)
) WITHOUT ROWID;
CREATE TABLE snapshot_base (          -- the snapshot a stream was seeded from, to serve it onward
    stream INTEGER PRIMARY KEY REFERENCES streams(id),
    seq    INTEGER NOT NULL,
    body   BLOB    NOT NULL,
    sig    BLOB    NOT NULL
);
CREATE TABLE peer_cursors (           -- hub only: how far each node holds each stream
    node    TEXT    NOT NULL,
    stream  INTEGER NOT NULL REFERENCES streams(id),
    seq     INTEGER NOT NULL,
    seen_ms INTEGER NOT NULL,
    PRIMARY KEY (node, stream)
) WITHOUT ROWID;

-- Materialized retail state, rebuilt by applying the log (see replica/apply.rs).
CREATE TABLE regions (
    id     TEXT PRIMARY KEY,
    name   TEXT NOT NULL,
    parent TEXT                       -- the region it belongs to; NULL for a top region
) WITHOUT ROWID;
CREATE TABLE stores (
    id                 TEXT PRIMARY KEY,
    name               TEXT    NOT NULL,
    region             TEXT    NOT NULL,
    mode               TEXT    NOT NULL,
    public_key         BLOB    NOT NULL,
    may_set_own_prices INTEGER NOT NULL,
    revoked            INTEGER NOT NULL,
    time_zone          TEXT    NOT NULL DEFAULT 'UTC'
) WITHOUT ROWID;
CREATE TABLE products (
    sku             TEXT PRIMARY KEY,
    name            TEXT    NOT NULL,
    category        TEXT    NOT NULL,
    unit_cost_cents INTEGER NOT NULL,
    active          INTEGER NOT NULL,
    body            BLOB    NOT NULL
) WITHOUT ROWID;
CREATE TABLE price_entries (
    scope             TEXT    NOT NULL,
    id                TEXT    NOT NULL,
    sku               TEXT    NOT NULL,
    kind              INTEGER NOT NULL,
    price_cents       INTEGER NOT NULL,
    effective_from_ms INTEGER NOT NULL,
    effective_to_ms   INTEGER,
    body              BLOB    NOT NULL,
    PRIMARY KEY (scope, id)
) WITHOUT ROWID;
CREATE INDEX price_entries_by_sku ON price_entries (sku);
CREATE TABLE promotions (
    scope TEXT NOT NULL,
    id    TEXT NOT NULL,
    body  BLOB NOT NULL,
    PRIMARY KEY (scope, id)
) WITHOUT ROWID;
-- Which promotions name which sku (`sku:…`), category (`cat:…`) or every sku (`*`), so a till
-- reads the few that concern a basket instead of every promotion held.
CREATE TABLE promotion_keys (
    key   TEXT NOT NULL,
    scope TEXT NOT NULL,
    id    TEXT NOT NULL,
    PRIMARY KEY (key, scope, id)
) WITHOUT ROWID;
CREATE INDEX promotion_keys_by_promotion ON promotion_keys (scope, id);
CREATE TABLE member_fields (
    member      TEXT    NOT NULL,
    field       INTEGER NOT NULL,
    value       TEXT    NOT NULL,
    hlc_wall    INTEGER NOT NULL,
    hlc_logical INTEGER NOT NULL,
    node        TEXT    NOT NULL,
    PRIMARY KEY (member, field)
) WITHOUT ROWID;
CREATE TABLE ledger (
    id      TEXT PRIMARY KEY,
    member  TEXT    NOT NULL,
    account INTEGER NOT NULL,
    kind    INTEGER NOT NULL,
    amount  INTEGER NOT NULL,
    receipt TEXT,
    at_ms   INTEGER NOT NULL,
    origin  TEXT    NOT NULL,           -- the node whose members stream carried it
    seq     INTEGER NOT NULL,           -- its change set's seq in that stream (0 from a snapshot)
    hold    TEXT,                       -- SpendAuth::Held: the hold it captured
    offline_allowance INTEGER,          -- SpendAuth::Offline: the allowance the store applied
    offline_before    INTEGER,          -- … and what it had taken offline before, unacknowledged
    tender  INTEGER,                    -- top-ups: PaymentMethod code
    note    TEXT    NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE INDEX ledger_by_member ON ledger (member, account);
CREATE INDEX ledger_by_receipt ON ledger (receipt) WHERE receipt IS NOT NULL;
-- HQ's loyalty policy (one row, postcard) and cards' own offline allowances.
CREATE TABLE loyalty_policy (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    body BLOB NOT NULL
);
CREATE TABLE member_allowances (
    member             TEXT PRIMARY KEY,
    stored_value_cents INTEGER NOT NULL,
    points             INTEGER NOT NULL
) WITHOUT ROWID;
-- Cards: the earliest issue of a number wins (by issued_at_ms, then node); statuses merge by
-- strength, then clock (model::CardStatus), in their own table so a status may arrive first.
CREATE TABLE cards (
    number       TEXT PRIMARY KEY,
    member       TEXT    NOT NULL,
    issued_at_ms INTEGER NOT NULL,
    node         TEXT    NOT NULL
) WITHOUT ROWID;
CREATE INDEX cards_by_member ON cards (member);
CREATE TABLE card_status (
    number      TEXT PRIMARY KEY,
    code        INTEGER NOT NULL,       -- CardStatus::code
    rank        INTEGER NOT NULL,       -- CardStatus::rank
    replaced_by TEXT,
    hlc_wall    INTEGER NOT NULL,
    hlc_logical INTEGER NOT NULL,
    node        TEXT    NOT NULL
) WITHOUT ROWID;
-- Merged members: every alias points at its final survivor (HQ's merges, in HQ's order).
CREATE TABLE member_aliases (
    alias    TEXT PRIMARY KEY,
    survivor TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX member_aliases_by_survivor ON member_aliases (survivor);
-- The digits of each member's current phone, for look-up and duplicate detection.
CREATE TABLE member_phones (
    member TEXT PRIMARY KEY,
    digits TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX member_phones_by_digits ON member_phones (digits);
-- HQ only: holds on balances asked for by online stores (not replicated; a hold is HQ's
-- promise to one store, kept until captured by a ledger entry, released, or expired).
CREATE TABLE holds (
    id          TEXT PRIMARY KEY,
    store       TEXT    NOT NULL,
    member      TEXT    NOT NULL,
    account     INTEGER NOT NULL,
    amount      INTEGER NOT NULL,       -- positive: what is held
    created_ms  INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL,
    state       INTEGER NOT NULL DEFAULT 0  -- 0 live, 1 captured, 2 released
) WITHOUT ROWID;
CREATE INDEX holds_live ON holds (member, account) WHERE state = 0;
CREATE TABLE stock (
    store TEXT    NOT NULL,
    sku   TEXT    NOT NULL,
    qty   INTEGER NOT NULL,
    PRIMARY KEY (store, sku)
) WITHOUT ROWID;
CREATE TABLE stock_movements (
    id        TEXT PRIMARY KEY,
    store     TEXT    NOT NULL,
    sku       TEXT    NOT NULL,
    kind      INTEGER NOT NULL,
    qty_delta INTEGER NOT NULL,
    reference TEXT    NOT NULL,
    at_ms     INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE receipts (
    id          TEXT PRIMARY KEY,
    store       TEXT    NOT NULL,
    sold_at_ms  INTEGER NOT NULL,
    member      TEXT,
    total_cents INTEGER NOT NULL,
    voided      INTEGER NOT NULL DEFAULT 0,
    seq         INTEGER NOT NULL,          -- of its change set in the store's sales stream
    body        BLOB    NOT NULL,          -- the Receipt, for HQ's price check
    price_check INTEGER                    -- HQ: NULL not yet priced again, 0 same, 1 differs
) WITHOUT ROWID;
CREATE INDEX receipts_by_store_time ON receipts (store, sold_at_ms);
CREATE INDEX receipts_by_store_seq ON receipts (store, seq);
CREATE INDEX receipts_unchecked ON receipts (seq) WHERE price_check IS NULL;
CREATE TABLE receipt_lines (
    receipt          TEXT    NOT NULL,
    line_no          INTEGER NOT NULL,
    sku              TEXT    NOT NULL,
    qty              INTEGER NOT NULL,
    unit_price_cents INTEGER NOT NULL,
    discount_cents   INTEGER NOT NULL,
    list_cents       INTEGER,                  -- the engine's price, where the till overrode it
    override_reason  TEXT,
    PRIMARY KEY (receipt, line_no)
) WITHOUT ROWID;
-- What each promotion (or a manual discount) took off each receipt line: allocations, the
-- per-promotion report and the overrides report read it.
CREATE TABLE line_discounts (
    receipt   TEXT    NOT NULL,
    line_no   INTEGER NOT NULL,
    n         INTEGER NOT NULL,
    promotion TEXT,                           -- NULL for a manual discount
    reason    TEXT,                           -- a manual discount's reason code
    cents     INTEGER NOT NULL,
    units     INTEGER NOT NULL,
    PRIMARY KEY (receipt, line_no, n)
) WITHOUT ROWID;
CREATE INDEX line_discounts_by_promotion ON line_discounts (promotion);
CREATE TABLE returns (
    id           TEXT PRIMARY KEY,
    store        TEXT    NOT NULL,
    original     TEXT    NOT NULL,
    at_ms        INTEGER NOT NULL,
    refund_cents INTEGER NOT NULL,
    unverified   INTEGER NOT NULL DEFAULT 0,  -- the store did not hold the original
    body         BLOB    NOT NULL
) WITHOUT ROWID;
CREATE INDEX returns_by_original ON returns (original);
CREATE TABLE voids (
    id       TEXT PRIMARY KEY,
    store    TEXT    NOT NULL,
    original TEXT    NOT NULL,
    at_ms    INTEGER NOT NULL,
    reason   TEXT    NOT NULL,
    seq      INTEGER NOT NULL              -- of its change set in the store's sales stream
) WITHOUT ROWID;
-- Every receipt applied asks whether a void for it arrived first: without this index that is a
-- scan of every void ever recorded, which at HQ grows without bound.
CREATE INDEX voids_by_original ON voids (original);

-- HQ only: receipts HQ priced again and charged otherwise than its own engine (pricecheck.rs).
CREATE TABLE price_differences (
    receipt       TEXT PRIMARY KEY,
    store         TEXT    NOT NULL,
    sold_at_ms    INTEGER NOT NULL,
    charged_cents INTEGER NOT NULL,
    hq_cents      INTEGER,                  -- NULL where HQ could not price it (see detail)
    cause         TEXT    NOT NULL,         -- PriceCause::as_str
    detail        TEXT    NOT NULL,
    checked_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX price_differences_by_store ON price_differences (store, sold_at_ms);

-- Stores only: what the POS answered to a write made with a till's key (receipt_no, return_no
-- …), committed with the write, so a retry gets the same answer and writes nothing.
CREATE TABLE pos_answers (
    key    TEXT PRIMARY KEY,
    answer BLOB NOT NULL
) WITHOUT ROWID;

-- HQ only: stores added but not yet enrolled, and their one-time tokens (blake3 of the token).
CREATE TABLE enrollments (
    store       TEXT PRIMARY KEY,
    name        TEXT    NOT NULL,
    region      TEXT    NOT NULL,
    mode        TEXT    NOT NULL,
    token_hash  BLOB    NOT NULL,
    created_ms  INTEGER NOT NULL,
    used_ms     INTEGER
) WITHOUT ROWID;

-- HQ only: API tokens (blake3 of the token) and the role each grants.
CREATE TABLE api_tokens (
    token_hash BLOB PRIMARY KEY,
    name       TEXT    NOT NULL,
    role       TEXT    NOT NULL,   -- admin, readonly, regional
    region     TEXT,               -- regional managers only
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER,            -- refused from then on; NULL: never expires
    revoked_ms INTEGER             -- refused from then on; NULL: not revoked
) WITHOUT ROWID;
