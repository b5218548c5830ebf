//! The till charges what HQ's prices and promotions say, with HQ down: real `hq-server` and
//! `store-agent` processes. HQ sets one promotion of every kind and a combination of three on
//! one sku; HQ goes down; the store's price look-up, basket and sale apply them (totals worked
//! out by hand below); returns and voids are checked against the original receipts; after HQ is
//! back, its per-promotion report shows the discounts the receipts carry, and it lists the
//! return the store could not check.

use chainsync::checkout::LocalTime;
use chainsync_tests::e2e::{Agent, Hq, wait_until};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);
/// The agent's reconnect backoff grows while HQ is down (up to ~14 s between attempts, see the
/// issue "Sync on real lines"), so catching up after HQ returns gets longer.
const RECONNECT_WAIT: Duration = Duration::from_secs(60);

/// (sku, category, price)
const CATALOG: [(&str, &str, &str); 15] = [
    ("tea", "drinks", "1.00"),
    ("coffee", "drinks", "2.50"),
    ("juice", "drinks", "1.50"),
    ("water", "drinks", "1.00"),
    ("milk", "dairy", "0.80"),
    ("cake", "food", "3.00"),
    ("bread", "food", "2.00"),
    ("mug", "gifts", "5.00"),
    ("soap", "home", "2.00"),
    ("crisps", "snacks", "2.00"),
    ("nuts", "snacks", "2.50"),
    ("dip", "snacks", "1.50"),
    ("pen", "office", "1.00"),
    ("pad", "office", "3.00"),
    ("salt", "pantry", "0.50"),
];

fn promo(hq: &Hq, id: &str, rule: &str, extra: &[&str]) {
    let mut args = vec!["promo", "add", "--id", id, "--name", id, "--rule", rule];
    args.extend_from_slice(extra);
    hq.cli_ok(&args);
}

fn basket(lines: &[(&str, i64)]) -> Value {
    Value::Array(
        lines
            .iter()
            .map(|(s, q)| json!({ "sku": s, "qty": q }))
            .collect(),
    )
}

fn sale(agent: &Agent, no: &str, member: Option<&str>, lines: &[(&str, i64)]) -> Value {
    let (status, body) = agent.send(
        "POST",
        "/v1/sales",
        &json!({ "receipt_no": no, "member": member, "lines": basket(lines) }),
    );
    assert_eq!(status, 201, "sale {no}: {body}");
    body
}

fn ret(agent: &Agent, no: &str, original: &str, lines: &[(&str, i64)]) -> (u16, Value) {
    agent.send(
        "POST",
        "/v1/returns",
        &json!({ "return_no": no, "original": original, "lines": basket(lines) }),
    )
}

fn stock(agent: &Agent, sku: &str) -> i64 {
    agent.get(&format!("/v1/stock/{sku}")).1["qty"]
        .as_i64()
        .unwrap()
}

#[test]
fn the_till_applies_every_promotion_offline_checks_returns_and_hq_reports_the_discounts() {
    let dir = tempfile::tempdir().unwrap();
    let hq = Hq::init(dir.path());
    for (sku, category, price) in CATALOG {
        hq.cli_ok(&[
            "product",
            "add",
            "--sku",
            sku,
            "--name",
            sku,
            "--category",
            category,
        ]);
        hq.cli_ok(&["price", "set", "--sku", sku, "--price", price]);
    }
    let provision = hq.add_store("S001", "north");
    let hq_proc = hq.start();
    let agent = Agent::init(dir.path(), "S001", &provision).unwrap();
    let _agent_proc = agent.start();
    hq.cli_ok(&["store", "set", "--id", "S001", "--time-zone", "Asia/Tokyo"]);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let (tokyo, known) = LocalTime::at(now_ms, "Asia/Tokyo");
    assert!(known);
    let hour = |h: u8| (h % 24).to_string();
    let happy = format!("{}-{}", hour(tokyo.hour), hour(tokyo.hour + 2));
    let later = format!("{}-{}", hour(tokyo.hour + 3), hour(tokyo.hour + 4));

    // One promotion of every kind.
    promo(
        &hq,
        "tea10",
        "percent_off:10",
        &["--sku", "tea", "--max-units", "2"],
    );
    promo(&hq, "milk-off", "amount_off:0.20", &["--sku", "milk"]);
    promo(&hq, "juice-deal", "fixed_price:1.20", &["--sku", "juice"]);
    promo(&hq, "bread-tiers", "tiers:3=1.80", &["--sku", "bread"]);
    promo(&hq, "coffee-b2g1", "buy:2:get:1", &["--sku", "coffee"]);
    promo(
        &hq,
        "office-bogo",
        "buy:1:get:1:across",
        &["--sku", "pen", "--sku", "pad"],
    );
    promo(
        &hq,
        "snack-mix",
        "mix:3:price:5.00",
        &["--category", "snacks"],
    );
    promo(
        &hq,
        "food-gift",
        "spend:10.00:gift:mug",
        &["--category", "food"],
    );
    promo(
        &hq,
        "juice-members",
        "percent_off:50",
        &["--sku", "juice", "--member-only"],
    );
    promo(
        &hq,
        "tea-gold",
        "fixed_price:0.50",
        &["--sku", "tea", "--level", "gold"],
    );
    promo(
        &hq,
        "tea-birthday",
        "percent_off:20",
        &["--sku", "tea", "--birthday-only"],
    );
    promo(
        &hq,
        "water-happy",
        "percent_off:30",
        &["--sku", "water", "--hours", &happy],
    );
    promo(
        &hq,
        "water-later",
        "percent_off:40",
        &["--sku", "water", "--hours", &later],
    );
    promo(
        &hq,
        "soap-alloc",
        "percent_off:50",
        &["--sku", "soap", "--allocate", "S001=3"],
    );
    // Three on one sku: two compound (0.10 off, then 10 %) against a best-price tier.
    promo(
        &hq,
        "cake-off",
        "amount_off:0.10",
        &["--sku", "cake", "--mode", "compound"],
    );
    promo(
        &hq,
        "cake-pct",
        "percent_off:10",
        &["--sku", "cake", "--mode", "compound"],
    );
    promo(&hq, "cake-tier", "tiers:2=2.80", &["--sku", "cake"]);
    // Members: M1 gold; M2 silver with a birthday this month (Tokyo).
    let admin = hq.token("admin");
    let (status, _) = hq.api(
        &admin,
        "PUT",
        "/v1/members/M1",
        Some(&json!({ "level": "gold" })),
    );
    assert_eq!(status, 200);
    let birthday = format!("{:02}-15", tokyo.month);
    let (status, _) = hq.api(
        &admin,
        "PUT",
        "/v1/members/M2",
        Some(&json!({ "level": "silver", "birthday": birthday })),
    );
    assert_eq!(status, 200);
    let (status, listed) = hq.api(&admin, "GET", "/v1/promotions", None);
    assert_eq!(status, 200);
    let rule_of = |id: &str| {
        listed["promotions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .map(|p| p["rule"].clone())
    };
    assert_eq!(
        rule_of("bread-tiers"),
        Some(json!({ "quantity_tiers": { "tiers": [{ "min_qty": 3, "unit_cents": 180 }] } })),
        "the rule is data"
    );

    // Basket A, worked out by hand:
    //   tea ×5: 10 % on at most 2 units        500 - 20 = 480
    //   milk: 0.20 off                          80 - 20 =  60
    //   juice: deal price                               = 120
    //   bread ×3: tier of 3 at 1.80                     = 540
    //   coffee ×3: buy 2 get 1                  750 - 250 = 500
    //   water: happy hour 30 % (the later window does not apply) = 70
    //   cake ×2: stack 3.00 - 0.10 = 2.90, -10 % = 2.61 each (522) beats the tier (560)
    //   food spend 5.22 + 5.40 = 10.62 ≥ 10.00: a mug free (a line at 0)
    //   total 480 + 60 + 120 + 540 + 500 + 70 + 522 = 2292
    let a_lines = [
        ("tea", 5),
        ("milk", 1),
        ("juice", 1),
        ("bread", 3),
        ("coffee", 3),
        ("water", 1),
        ("cake", 2),
    ];
    wait_until(WAIT, "every promotion and member at the store", || {
        let (_, priced) = agent.send(
            "POST",
            "/v1/baskets/price",
            &json!({ "lines": basket(&a_lines) }),
        );
        let (_, m2) = agent.get("/v1/members/M2");
        let (_, soap) = agent.get("/v1/prices/soap");
        (priced["total_cents"] == 2292
            && m2["profile"]["birthday"] == json!(birthday)
            && soap["promoted_cents"] == 100)
            .then_some(())
    });

    // HQ goes down; the store prices and sells on its own. HQ's staff raise the price of salt
    // meanwhile, which the store cannot hear of.
    hq_proc.kill9();
    hq.cli_ok(&["price", "set", "--sku", "salt", "--price", "0.60"]);
    let (status, tea) = agent.get("/v1/prices/tea");
    assert_eq!(status, 200, "{tea}");
    assert_eq!(
        (tea["price_cents"].as_i64(), tea["promoted_cents"].as_i64()),
        (Some(100), Some(90)),
        "{tea}"
    );
    let (_, priced) = agent.send(
        "POST",
        "/v1/baskets/price",
        &json!({ "lines": basket(&a_lines) }),
    );
    assert_eq!(priced["total_cents"], 2292, "{priced}");
    let a = sale(&agent, "A", None, &a_lines);
    assert_eq!(a["total_cents"], 2292, "{a}");
    let lines = a["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 8, "seven lines and the gift: {a}");
    assert_eq!(
        (
            lines[7]["sku"].as_str(),
            lines[7]["gift"].as_bool(),
            lines[7]["amount_cents"].as_i64()
        ),
        (Some("mug"), Some(true), Some(0))
    );
    let cake = &lines[6];
    assert_eq!(
        cake["discounts"],
        json!([
            { "promotion": "hq-cake-off", "cents": 20, "units": 2 },
            { "promotion": "hq-cake-pct", "cents": 58, "units": 2 },
        ]),
        "{cake}"
    );
    assert!(
        a["explanation"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("water-happy")),
        "{a}"
    );
    assert_eq!(stock(&agent, "mug"), -1, "the gift leaves the shelf");

    // Members: M1 gold pays the gold tea price and half for juice; M2's birthday gives 20 %.
    let b = sale(&agent, "B", Some("M1"), &[("tea", 1), ("juice", 1)]);
    assert_eq!(b["total_cents"], 50 + 75, "{b}");
    let c = sale(&agent, "C", Some("M2"), &[("tea", 1)]);
    assert_eq!(c["total_cents"], 80, "{c}");
    let anon = sale(&agent, "C2", None, &[("tea", 1), ("juice", 1)]);
    assert_eq!(anon["total_cents"], 90 + 120, "{anon}");
    // Mix and match 6.00 → 5.00; pen and pad, the pen free.
    let d = sale(
        &agent,
        "D",
        None,
        &[
            ("crisps", 1),
            ("nuts", 1),
            ("dip", 1),
            ("pen", 1),
            ("pad", 1),
        ],
    );
    assert_eq!(d["total_cents"], 500 + 300, "{d}");
    // The allocation of 3 soap units runs out, offline: 2, then 1, then none.
    let soaps: Vec<i64> = ["S1", "S2", "S3"]
        .iter()
        .map(|no| {
            sale(&agent, no, None, &[("soap", 2)])["total_cents"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(soaps, vec![200, 300, 400]);

    // A till's own price or discount needs a reason code; a discount beyond the line is refused.
    let (status, body) = agent.send(
        "POST",
        "/v1/sales",
        &json!({ "receipt_no": "E", "lines": [{ "sku": "tea", "qty": 1 }, { "sku": "cake", "qty": 1, "unit_price_cents": 100 }] }),
    );
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("line 1"), "{body}");
    let (status, body) = agent.send(
        "POST",
        "/v1/sales",
        &json!({ "receipt_no": "E", "lines": [{ "sku": "tea", "qty": 1, "discount_cents": 200, "reason": "goodwill" }] }),
    );
    assert_eq!(status, 422, "{body}");
    let (status, e) = agent.send(
        "POST",
        "/v1/sales",
        &json!({ "receipt_no": "E", "lines": [{ "sku": "cake", "qty": 1, "unit_price_cents": 150, "reason": "damaged" }] }),
    );
    assert_eq!((status, &e["total_cents"]), (201, &json!(150)), "{e}");
    // A retry answers what the first call answered and writes nothing.
    let (status, again) = agent.send(
        "POST",
        "/v1/sales",
        &json!({ "receipt_no": "A", "lines": basket(&a_lines) }),
    );
    assert_eq!(
        (status, &again["total_cents"], &again["duplicate"]),
        (200, &json!(2292), &json!(true))
    );

    // Returns against receipt A: tea ×5 paid 4.80 in all.
    let tea_before = stock(&agent, "tea");
    let (status, r1) = ret(&agent, "R1", "S001-PA", &[("tea", 2)]);
    assert_eq!(
        (status, &r1["refund_cents"]),
        (201, &json!(192)),
        "the price paid, 2/5 of 4.80: {r1}"
    );
    let (status, again) = ret(&agent, "R1", "S001-PA", &[("tea", 2)]);
    assert_eq!(
        (status, &again["refund_cents"], &again["duplicate"]),
        (200, &json!(192), &json!(true))
    );
    assert_eq!(
        stock(&agent, "tea"),
        tea_before + 2,
        "the retry moved no stock"
    );
    let (status, body) = ret(&agent, "R2", "S001-PA", &[("tea", 4)]);
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("sold 5 and earlier returns took back 2"),
        "{body}"
    );
    let (status, r3) = ret(&agent, "R3", "S001-PA", &[("tea", 3)]);
    assert_eq!((status, &r3["refund_cents"]), (201, &json!(288)), "{r3}");
    let (status, body) = ret(&agent, "R4", "S001-PA", &[("tea", 1)]);
    assert_eq!(status, 422, "{body}");
    let (status, body) = ret(&agent, "R5", "S001-PA", &[("soap", 1)]);
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not on receipt"),
        "{body}"
    );
    // No void of a receipt with returns; a void of one without, then no return against it.
    let (status, body) = agent.send(
        "POST",
        "/v1/voids",
        &json!({ "void_no": "V1", "original": "S001-PA", "reason": "mistake" }),
    );
    assert_eq!(status, 409, "{body}");
    let crisps_before = stock(&agent, "crisps");
    let (status, body) = agent.send(
        "POST",
        "/v1/voids",
        &json!({ "void_no": "V2", "original": "S001-PD", "reason": "mistake" }),
    );
    assert_eq!(status, 201, "{body}");
    let (status, again) = agent.send(
        "POST",
        "/v1/voids",
        &json!({ "void_no": "V2", "original": "S001-PD", "reason": "mistake" }),
    );
    assert_eq!(
        (status, &again["duplicate"]),
        (200, &json!(true)),
        "{again}"
    );
    assert_eq!(stock(&agent, "crisps"), crisps_before + 1, "voided once");
    let (status, body) = ret(&agent, "R6", "S001-PD", &[("crisps", 1)]);
    assert_eq!(status, 409, "{body}");
    // A receipt this store does not hold: taken as unverified at today's price.
    let (status, unverified) = ret(&agent, "R7", "S009-P77", &[("tea", 1)]);
    assert_eq!(
        (
            status,
            &unverified["unverified"],
            &unverified["refund_cents"]
        ),
        (201, &json!(true), &json!(90)),
        "{unverified}"
    );

    let f = sale(&agent, "F", None, &[("salt", 2)]);
    assert_eq!(f["total_cents"], 100, "the price the store holds: {f}");

    // HQ back: the receipts arrive, and the report shows what they carry.
    let _hq_proc = hq.start();
    let replica = hq.replica();
    wait_until(RECONNECT_WAIT, "every receipt at HQ", || {
        (replica.receipt_count().unwrap() == 10).then_some(())
    });
    // HQ prices every receipt again with its own facts: every kind of promotion, the stack,
    // the members' prices, the hours in Tokyo and the allocation come out as the store charged
    // them; only the salt sold before the new price reached the store differs, and why is said.
    wait_until(WAIT, "HQ's price check of every receipt", || {
        (replica.receipts_unchecked().unwrap() == 0).then_some(())
    });
    let pricing = replica.price_differences(None).unwrap();
    let pricing_csv = hq.cli_ok(&["report", "pricing"]);
    assert_eq!(
        pricing
            .iter()
            .map(|d| (d.receipt.as_str(), d.charged_cents, d.hq_cents, d.cause))
            .collect::<Vec<_>>(),
        vec![(
            "S001-PF",
            100,
            Some(120),
            chainsync::pricecheck::PriceCause::OlderFacts
        )],
        "{pricing:?}"
    );
    assert!(
        pricing_csv.starts_with(
            "receipt,store,sold_at_ms,charged_cents,hq_cents,difference_cents,cause,detail\n"
        ),
        "{pricing_csv}"
    );
    assert!(
        pricing_csv.contains("S001-PF,S001,")
            && pricing_csv.contains(
                ",100,120,-20,older_facts,\"line 0: charged 2 x salt @ 0.50; HQ 2 x salt @ 0.60; \
                 the store held hq/prices@chain to change set"
            ),
        "{pricing_csv}"
    );
    let (status, listed) = hq.api(&admin, "GET", "/v1/reports/pricing", None);
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["rows"].as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed["rows"][0]["cause"], "older_facts", "{listed}");
    wait_until(WAIT, "every return at HQ", || {
        (replica.unverified_returns().unwrap().len() == 1).then_some(())
    });
    let mut given: BTreeMap<String, i64> = BTreeMap::new();
    for answer in [&a, &b, &c, &anon, &e] {
        for p in answer["promotions"].as_array().unwrap() {
            *given
                .entry(p["id"].as_str().unwrap().to_owned())
                .or_default() += p["cents"].as_i64().unwrap();
        }
    }
    given.insert("hq-soap-alloc".into(), 200 + 100);
    let (status, report) = hq.api(&admin, "GET", "/v1/reports/promotions", None);
    assert_eq!(status, 200);
    let reported: BTreeMap<String, i64> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["promotion"].as_str().unwrap().to_owned(),
                r["discount_cents"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(reported, given, "the voided receipt D counts for nothing");
    assert_eq!(reported["hq-cake-pct"], 58);
    let csv = hq.cli_ok(&["report", "promotions", "--by", "region"]);
    assert!(
        csv.starts_with("promotion,region,receipts,units,sales_cents,discount_cents\n"),
        "{csv}"
    );
    assert!(csv.contains("hq-soap-alloc,north,2,3,"), "{csv}");
    let overrides = hq.cli_ok(&["report", "overrides"]);
    assert!(
        overrides.contains("S001,S001-PE,cake,price,300,150,damaged,"),
        "{overrides}"
    );
    let returns = hq.cli_ok(&["report", "returns"]);
    assert!(returns.contains("S001-TR7,S001,S009-P77,"), "{returns}");
    assert!(returns.contains("waiting for the original"), "{returns}");

    // HQ ends a promotion early: the store stops giving it.
    hq.cli_ok(&["promo", "end", "--id", "milk-off"]);
    wait_until(WAIT, "the ended promotion at the store", || {
        (agent.get("/v1/prices/milk").1["promoted_cents"] == 80).then_some(())
    });
}

// A three-tier chain under HQ (branch company → office → store): the most specific region's
// price wins, a branch's promotion covers the stores of its offices, a branch manager's token
// sees its offices and no other branch, and a store HQ allows sets its own price, which beats
// every region's and reaches HQ.
#[test]
fn nested_regions_price_by_the_most_specific_and_a_store_may_set_its_own_price() {
    let dir = tempfile::tempdir().unwrap();
    let hq = Hq::init(dir.path());
    hq.cli_ok(&["region", "add", "--id", "france", "--name", "France"]);
    hq.cli_ok(&[
        "region", "add", "--id", "paris", "--name", "Paris", "--parent", "france",
    ]);
    hq.cli_ok(&[
        "region", "add", "--id", "lyon", "--name", "Lyon", "--parent", "france",
    ]);
    let out = hq.cli(&[
        "region", "add", "--id", "france", "--name", "x", "--parent", "paris",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cycle"),
        "a region cannot sit under its own office"
    );
    hq.cli_ok(&[
        "product",
        "add",
        "--sku",
        "tea",
        "--name",
        "Tea",
        "--category",
        "drinks",
    ]);
    hq.cli_ok(&["price", "set", "--sku", "tea", "--price", "1.00"]);
    hq.cli_ok(&[
        "price",
        "set",
        "--sku",
        "tea",
        "--price",
        "0.95",
        "--scope",
        "region:france",
    ]);
    hq.cli_ok(&[
        "price",
        "set",
        "--sku",
        "tea",
        "--price",
        "0.90",
        "--scope",
        "region:paris",
    ]);
    promo(
        &hq,
        "france10",
        "percent_off:10",
        &["--sku", "tea", "--scope", "region:france"],
    );
    let stores = [("S001", "paris"), ("S002", "lyon"), ("S003", "uk")];
    let provisions: Vec<_> = stores
        .iter()
        .map(|(id, region)| hq.add_store(id, region))
        .collect();
    let _hq_proc = hq.start();
    let agents: Vec<Agent> = stores
        .iter()
        .zip(&provisions)
        .map(|((id, _), p)| Agent::init(dir.path(), id, p).unwrap())
        .collect();
    let _procs: Vec<_> = agents.iter().map(Agent::start).collect();
    // Paris: its office's 0.90, the branch's 10 % → 0.81; Lyon: the branch's 0.95, less 10 %
    // (0.095, rounded half up to 0.10) → 0.85; the UK store: the chain's 1.00, no promotion.
    for (agent, expected) in agents.iter().zip([(90, 81), (95, 85), (100, 100)]) {
        let mut last = json!(null);
        let seen = (0..200).find_map(|_| {
            // 20 s
            let (_, p) = agent.get("/v1/prices/tea");
            let ok = p["price_cents"] == expected.0 && p["promoted_cents"] == expected.1;
            last = p;
            std::thread::sleep(Duration::from_millis(100));
            ok.then_some(())
        });
        assert!(seen.is_some(), "{:?} at {}: {last}", expected, agent.store);
    }

    // The branch manager sees its offices' stores, not the other branch.
    let france = hq.token("regional:france");
    let (status, listed) = hq.api(&france, "GET", "/v1/stores", None);
    assert_eq!(status, 200);
    let ids: Vec<&str> = listed["stores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["store"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["S001", "S002"], "{listed}");
    assert_eq!(
        hq.api(&france, "GET", "/v1/stores?region=paris", None).0,
        200
    );
    assert_eq!(hq.api(&france, "GET", "/v1/stores?region=uk", None).0, 403);
    let paris = hq.token("regional:paris");
    let (_, prices) = hq.api(&paris, "GET", "/v1/prices", None);
    let scopes: Vec<&str> = prices["prices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["scope"].as_str().unwrap())
        .collect();
    assert!(
        scopes.contains(&"region:france")
            && scopes.contains(&"region:paris")
            && !scopes.contains(&"region:lyon"),
        "{prices}"
    );

    // S001 may set its own prices once HQ says so; S002 may not.
    let own = json!({ "price_cents": 80 });
    let (status, body) = agents[0].send("PUT", "/v1/prices/tea", &own);
    assert_eq!(status, 403, "{body}");
    hq.cli_ok(&[
        "store",
        "set",
        "--id",
        "S001",
        "--may-set-own-prices",
        "true",
    ]);
    wait_until(WAIT, "the permission at S001", || {
        (agents[0].send("PUT", "/v1/prices/tea", &own).0 == 201).then_some(())
    });
    let (_, p) = agents[0].get("/v1/prices/tea");
    assert_eq!(
        (&p["price_cents"], &p["promoted_cents"]),
        (&json!(80), &json!(72)),
        "the store's own price beats every region's: {p}"
    );
    assert_eq!(agents[1].send("PUT", "/v1/prices/tea", &own).0, 403);
    let replica = hq.replica();
    wait_until(WAIT, "S001's price at HQ", || {
        replica
            .price_entries()
            .unwrap()
            .iter()
            .any(|e| e.scope.to_string() == "store:S001" && e.price_cents == 80)
            .then_some(())
    });
    assert_eq!(
        agents[1].get("/v1/prices/tea").1["price_cents"],
        95,
        "another store's price stays its own"
    );
}
