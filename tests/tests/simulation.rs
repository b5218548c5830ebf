//! Deterministic simulation of HQ and 50 stores under dropped, duplicated, reordered and delayed
//! frames, partitions and crashes (see `chainsync_tests::sim`).
//!
//! `SIM_SEEDS=N` runs seeds 0..N (default 200), `SIM_SEED=S` runs only seed S. A failure prints
//! the seed and the tail of its event log.

use chainsync_tests::sim::{Sim, SimConfig, SimSummary};
use std::sync::Mutex;

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let count = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200u64);
    (0..count).collect()
}

#[test]
fn chain_converges_after_faults_for_every_seed() {
    let seeds = seeds();
    let next = Mutex::new(seeds.clone().into_iter());
    let results: Mutex<Vec<(u64, Result<SimSummary, String>)>> = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(4);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let Some(seed) = next.lock().unwrap().next() else {
                        break;
                    };
                    let result = Sim::run(SimConfig::standard(seed)).map_err(|f| f.to_string());
                    results.lock().unwrap().push((seed, result));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(seed, _)| *seed);
    let mut failures = Vec::new();
    let (mut receipts, mut dropped, mut duplicated, mut crashes, mut partitions) = (0, 0, 0, 0, 0);
    let (mut holds, mut offline, mut refused, mut overdrawn, mut merges, mut cards) =
        (0, 0, 0, 0, 0, 0);
    for (seed, result) in &results {
        match result {
            Ok(s) => {
                receipts += s.receipts;
                dropped += s.frames_dropped;
                duplicated += s.frames_duplicated;
                crashes += s.crashes;
                partitions += s.partitions;
                holds += s.holds;
                offline += s.offline_takes;
                refused += s.refused_takes;
                overdrawn += s.overdrawn;
                merges += s.merges;
                cards += s.cards;
            }
            Err(f) => failures.push((*seed, f.clone())),
        }
    }
    println!(
        "{} seeds: {receipts} receipts, {dropped} frames dropped, {duplicated} duplicated, {crashes} crashes, {partitions} partitions",
        results.len()
    );
    println!(
        "members' money: {holds} takes held at HQ, {offline} taken offline, {refused} refused, \
         {overdrawn} accounts overdrawn at the end (each within the allowances and listed), \
         {merges} merges, {cards} cards issued"
    );
    assert_eq!(results.len(), seeds.len(), "every seed ran");
    if let Some((_, first)) = failures.first() {
        let seeds: Vec<u64> = failures.iter().map(|(s, _)| *s).collect();
        panic!(
            "{} of {} seeds failed: {seeds:?}\n{first}",
            failures.len(),
            results.len()
        );
    }
    assert!(
        receipts > 0 && dropped > 0 && crashes > 0,
        "the simulation exercised sales and faults"
    );
    if seeds.len() >= 20 {
        assert!(
            holds > 0 && offline > 0 && refused > 0 && merges > 0 && cards > 0,
            "the simulation exercised holds, offline takes, refusals, merges and cards"
        );
    }
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let cfg = SimConfig {
        stores: 12,
        fault_steps: 150,
        ..SimConfig::standard(7)
    };
    let first = Sim::run(cfg.clone()).unwrap_or_else(|f| panic!("{f}"));
    let second = Sim::run(cfg).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(first, second);
    let other = Sim::run(SimConfig {
        stores: 12,
        fault_steps: 150,
        ..SimConfig::standard(8)
    })
    .unwrap_or_else(|f| panic!("{f}"));
    assert_ne!(
        first.hq_heads_digest, other.hq_heads_digest,
        "another seed makes another history"
    );
}
