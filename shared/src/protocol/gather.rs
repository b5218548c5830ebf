//! Filling one batch (a push or a pull's answer) from many streams so that no stream blocks
//! another.
//!
//! Invariants:
//! - a batch holds at most `max_count` change sets and at most `max_bytes` of change-set bodies,
//!   unless it holds a single change set (one larger than a batch still goes, alone);
//! - directory streams come first and take what they need: every other change set is checked
//!   against the keys they carry;
//! - every other stream with something pending gets an equal share of what is left, and a stream
//!   that needs less leaves the rest to the others. A stream the receiver refuses over and over
//!   (halted there) so takes at most its share, and the others still move;
//! - the batch lists streams in the order given (priority order), each in seq order, and says
//!   whether anything pending was left out.

use crate::changeset::SignedChangeSet;
use crate::ids::{StreamId, Topic};

/// A stream with change sets to send: the `count` after seq `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingStream {
    pub stream: StreamId,
    pub after: u64,
    pub count: u64,
}

/// Reads up to `max_count` change sets of a stream after a seq, within `max_bytes` of bodies
/// (at least one if there is one), in seq order.
pub trait ReadStream {
    type Error;
    fn read(
        &self,
        stream: &StreamId,
        after: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<SignedChangeSet>, Self::Error>;
}

/// One batch gathered from several streams.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gathered {
    pub change_sets: Vec<SignedChangeSet>,
    /// How many change sets each pending stream gave, by its index in the list asked for.
    pub taken: Vec<u64>,
    /// Something pending was left out (more remains).
    pub left_out: bool,
}

/// The batch of `pending` (in priority order) within the limits.
pub fn gather<R: ReadStream>(
    pending: &[PendingStream],
    max_count: usize,
    max_bytes: usize,
    reader: &R,
) -> Result<Gathered, R::Error> {
    let mut order: Vec<usize> = (0..pending.len())
        .filter(|&i| pending[i].count > 0)
        .collect();
    // Directory first (in the given order), then the smallest needs first so that what they
    // leave over goes to the larger ones.
    order.sort_by_key(|&i| {
        (
            pending[i].stream.topic != Topic::Directory,
            pending[i].count,
        )
    });
    let mut shares: Vec<Vec<SignedChangeSet>> = vec![Vec::new(); pending.len()];
    let (mut count, mut bytes) = (0usize, 0usize);
    let mut left_out = false;
    let mut others_left = order
        .iter()
        .filter(|&&i| pending[i].stream.topic != Topic::Directory)
        .count();
    for i in order {
        let p = &pending[i];
        let directory = p.stream.topic == Topic::Directory;
        let room_count = max_count.saturating_sub(count);
        let room_bytes = max_bytes.saturating_sub(bytes);
        let ways = if directory { 1 } else { others_left.max(1) };
        if !directory {
            others_left = others_left.saturating_sub(1);
        }
        let want = usize::try_from(p.count)
            .unwrap_or(usize::MAX)
            .min((room_count / ways).max(1))
            .min(room_count);
        if want == 0 {
            left_out = true;
            continue;
        }
        let chunk = reader.read(&p.stream, p.after, want, (room_bytes / ways).max(1))?;
        let mut taken = Vec::with_capacity(chunk.len());
        for cs in chunk {
            let fits = bytes + cs.body.len() <= max_bytes;
            if !fits && count > 0 {
                break;
            }
            bytes += cs.body.len();
            count += 1;
            taken.push(cs);
        }
        if (taken.len() as u64) < p.count {
            left_out = true;
        }
        shares[i] = taken;
    }
    Ok(Gathered {
        taken: shares.iter().map(|s| s.len() as u64).collect(),
        change_sets: shares.into_iter().flatten().collect(),
        left_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Streams of `bytes`-sized change sets, seqs 1..=head, bodies `"<stream> <seq>"` padded.
    struct Fake {
        heads: BTreeMap<StreamId, (u64, usize)>,
    }

    impl ReadStream for Fake {
        type Error = ();
        fn read(
            &self,
            stream: &StreamId,
            after: u64,
            max_count: usize,
            max_bytes: usize,
        ) -> Result<Vec<SignedChangeSet>, ()> {
            let (head, size) = self.heads[stream];
            let mut out = Vec::new();
            let mut bytes = 0;
            for seq in after + 1..=head {
                if out.len() == max_count || (!out.is_empty() && bytes + size > max_bytes) {
                    break;
                }
                let mut body = format!("{stream} {seq}").into_bytes();
                body.resize(size, b' ');
                bytes += size;
                out.push(SignedChangeSet { body, sig: [0; 64] });
            }
            Ok(out)
        }
    }

    fn stream(text: &str) -> StreamId {
        text.parse().unwrap()
    }

    /// Per stream, how many change sets the batch took.
    fn taken(batch: &[SignedChangeSet]) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for cs in batch {
            let text = String::from_utf8_lossy(&cs.body);
            let name = text.split(' ').next().unwrap().to_owned();
            *out.entry(name).or_default() += 1;
        }
        out
    }

    fn run(
        streams: &[(&str, u64, u64, usize)],
        max_count: usize,
        max_bytes: usize,
    ) -> (Vec<SignedChangeSet>, bool) {
        let fake = Fake {
            heads: streams
                .iter()
                .map(|(s, _, head, size)| (stream(s), (*head, *size)))
                .collect(),
        };
        let pending: Vec<PendingStream> = streams
            .iter()
            .map(|(s, after, head, _)| PendingStream {
                stream: stream(s),
                after: *after,
                count: head - after,
            })
            .collect();
        let g = gather(&pending, max_count, max_bytes, &fake).unwrap();
        let from_taken: u64 = g.taken.iter().sum();
        assert_eq!(from_taken, g.change_sets.len() as u64);
        (g.change_sets, g.left_out)
    }

    #[test]
    fn a_long_stream_takes_only_its_share_and_the_others_move() {
        // S001/members holds 5,000 pending (say halted at HQ): sales still get their share.
        let (batch, more) = run(
            &[
                ("S001/members", 0, 5_000, 100),
                ("S001/inventory", 0, 10, 100),
                ("S001/sales", 0, 900, 100),
            ],
            512,
            usize::MAX,
        );
        let t = taken(&batch);
        assert_eq!(t["S001/inventory"], 10);
        assert_eq!(t["S001/members"], 251);
        assert_eq!(t["S001/sales"], 251);
        assert_eq!(batch.len(), 512);
        assert!(more);
    }

    #[test]
    fn what_a_small_stream_leaves_goes_to_the_others_and_order_is_priority() {
        let (batch, more) = run(
            &[("S001/members", 0, 3, 32), ("S001/sales", 0, 40, 32)],
            512,
            usize::MAX,
        );
        assert_eq!(batch.len(), 43);
        assert!(!more);
        // Priority order as given: members first, each in seq order.
        let first = String::from_utf8_lossy(&batch[0].body).to_string();
        let fourth = String::from_utf8_lossy(&batch[3].body).to_string();
        assert!(first.starts_with("S001/members 1"), "{first}");
        assert!(fourth.starts_with("S001/sales 1"), "{fourth}");
    }

    #[test]
    fn the_directory_comes_first_and_in_full() {
        let (batch, more) = run(
            &[
                ("HQ/directory", 0, 300, 32),
                ("HQ/catalog", 0, 1_000, 32),
                ("S002/members", 0, 1_000, 32),
            ],
            512,
            usize::MAX,
        );
        let t = taken(&batch);
        assert_eq!(t["HQ/directory"], 300);
        assert_eq!(t["HQ/catalog"] + t["S002/members"], 212);
        assert!(more);
    }

    #[test]
    fn bytes_are_bounded_and_a_single_large_change_set_still_goes() {
        let (batch, more) = run(
            &[("S001/members", 0, 10, 600), ("S001/sales", 0, 10, 600)],
            512,
            2_000,
        );
        let total: usize = batch.iter().map(|c| c.body.len()).sum();
        assert!(total <= 2_000, "{total}");
        assert_eq!(batch.len(), 3);
        assert!(more);
        let (batch, more) = run(&[("S001/sales", 0, 2, 5_000)], 512, 2_000);
        assert_eq!(batch.len(), 1);
        assert!(more);
        // Many streams each wanting one large change set never overflow the budget.
        let many: Vec<(String, u64, u64, usize)> = (1..=40)
            .map(|i| (format!("S{i:03}/members"), 0, 1, 900))
            .collect();
        let refs: Vec<(&str, u64, u64, usize)> = many
            .iter()
            .map(|(s, a, h, b)| (s.as_str(), *a, *h, *b))
            .collect();
        let (batch, more) = run(&refs, 512, 10_000);
        assert_eq!(batch.len(), 11);
        assert!(more);
    }

    #[test]
    fn nothing_pending_is_an_empty_batch_and_counts_start_after_the_cursor() {
        let (batch, more) = run(&[("S001/sales", 7, 7, 32)], 512, usize::MAX);
        assert!(batch.is_empty() && !more);
        let (batch, _) = run(&[("S001/sales", 5, 7, 32)], 512, usize::MAX);
        let seqs: Vec<String> = batch
            .iter()
            .map(|c| String::from_utf8_lossy(&c.body).trim().to_owned())
            .collect();
        assert_eq!(seqs, ["S001/sales 6", "S001/sales 7"]);
    }
}
