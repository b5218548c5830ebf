//! Cards, merged members and phone look-ups in the replica.
//!
//! Invariants:
//! - a member id that was merged away resolves to its survivor ([`Replica::canonical_member`]),
//!   and every balance, profile and statement of a survivor counts its aliases' entries once;
//! - a card's status is the strongest one written, then the latest among equals (`apply.rs`),
//!   so only HQ's later write moves a card between active and frozen, and nothing revives a
//!   lost, cancelled or replaced card;
//! - a card resolves to the canonical member of the member it was issued to.

use super::{Replica, ReplicaError};
use crate::ids::{CardNo, MemberId};
use crate::model::CardStatus;
use rusqlite::{OptionalExtension, params};

/// A card as a till needs it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CardInfo {
    pub number: CardNo,
    /// The canonical member (the survivor, if the card's member was merged).
    pub member: MemberId,
    pub status: CardStatus,
    pub issued_at_ms: i64,
}

impl CardInfo {
    /// Whether the card may be used at a till (active).
    pub fn usable(&self) -> bool {
        self.status == CardStatus::Active
    }

    /// The card as the POS and HQ APIs show it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "number": self.number.as_str(),
            "member": self.member.as_str(),
            "status": self.status.as_str(),
            "replaced_by": match &self.status {
                CardStatus::Replaced { by } => Some(by.as_str()),
                _ => None,
            },
            "issued_at_ms": self.issued_at_ms,
        })
    }
}

/// A card as `(number, member, status code, replaced by)`.
pub type CardRow = (String, String, u8, Option<String>);

/// Members sharing one phone number, for a person to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PossibleDuplicate {
    pub phone_digits: String,
    pub members: Vec<MemberId>,
}

fn status_of(code: Option<u8>, replaced_by: Option<String>) -> Result<CardStatus, ReplicaError> {
    Ok(match code {
        None | Some(0) => CardStatus::Active,
        Some(1) => CardStatus::Frozen,
        Some(2) => CardStatus::Lost,
        Some(3) => CardStatus::Cancelled,
        Some(4) => CardStatus::Replaced {
            by: replaced_by
                .unwrap_or_default()
                .parse()
                .map_err(|_| ReplicaError::Corrupt("replaced card without its successor".into()))?,
        },
        Some(n) => return Err(ReplicaError::Corrupt(format!("card status code {n}"))),
    })
}

impl Replica {
    /// The member `member` stands for: its survivor if it was merged into another, else itself.
    pub fn canonical_member(&self, member: &MemberId) -> Result<MemberId, ReplicaError> {
        let survivor: Option<String> = self
            .connection()
            .prepare_cached("SELECT survivor FROM member_aliases WHERE alias = ?1")?
            .query_row(params![member.as_str()], |r| r.get(0))
            .optional()?;
        match survivor {
            None => Ok(member.clone()),
            Some(s) => s
                .parse()
                .map_err(|_| ReplicaError::Corrupt(format!("survivor `{s}` of {member}"))),
        }
    }

    /// A card and where it stands (`None`: not issued here, nor any status heard).
    pub fn card(&self, number: &CardNo) -> Result<Option<CardInfo>, ReplicaError> {
        let row: Option<(String, i64, Option<u8>, Option<String>)> = self
            .connection()
            .prepare_cached(
                "SELECT c.member, c.issued_at_ms, s.code, s.replaced_by
                 FROM cards c LEFT JOIN card_status s ON s.number = c.number
                 WHERE c.number = ?1",
            )?
            .query_row(params![number.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        let Some((member, issued_at_ms, code, replaced_by)) = row else {
            return Ok(None);
        };
        let member: MemberId = member
            .parse()
            .map_err(|_| ReplicaError::Corrupt(format!("member of card {number}")))?;
        Ok(Some(CardInfo {
            number: number.clone(),
            member: self.canonical_member(&member)?,
            status: status_of(code, replaced_by)?,
            issued_at_ms,
        }))
    }

    /// Every card of a member (and of the members merged into it), by number.
    pub fn cards_of(&self, member: &MemberId) -> Result<Vec<CardInfo>, ReplicaError> {
        let member = self.canonical_member(member)?;
        let numbers: Vec<String> = self
            .connection()
            .prepare_cached(
                "SELECT number FROM cards WHERE member IN
                   (SELECT ?1 UNION ALL SELECT alias FROM member_aliases WHERE survivor = ?1)
                 ORDER BY number",
            )?
            .query_map(params![member.as_str()], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for n in numbers {
            if let Ok(number) = n.parse::<CardNo>()
                && let Some(card) = self.card(&number)?
            {
                out.push(card);
            }
        }
        Ok(out)
    }

    /// The members whose current phone has these digits (canonical, sorted, no repeats).
    pub fn members_by_phone(&self, phone: &str) -> Result<Vec<MemberId>, ReplicaError> {
        let digits = crate::loyalty::phone_digits(phone);
        if digits.is_empty() {
            return Ok(Vec::new());
        }
        let raw: Vec<String> = self
            .connection()
            .prepare_cached("SELECT member FROM member_phones WHERE digits = ?1")?
            .query_map(params![digits], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for m in raw {
            if let Ok(m) = m.parse::<MemberId>() {
                out.push(self.canonical_member(&m)?);
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Every card as `(number, member, status code, replaced by)`, sorted: a fingerprint for
    /// comparing replicas.
    pub fn all_cards(&self) -> Result<Vec<CardRow>, ReplicaError> {
        let mut stmt = self.connection().prepare_cached(
            "SELECT c.number, c.member, coalesce(s.code, 0), s.replaced_by
             FROM cards c LEFT JOIN card_status s ON s.number = c.number ORDER BY c.number",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Phones shared by more than one (canonical) member: sign-ups that may be one person.
    pub fn possible_duplicates(&self) -> Result<Vec<PossibleDuplicate>, ReplicaError> {
        let phones: Vec<String> = self
            .connection()
            .prepare_cached(
                "SELECT digits FROM member_phones GROUP BY digits HAVING count(*) > 1
                 ORDER BY digits",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for digits in phones {
            let members = self.members_by_phone(&digits)?;
            if members.len() > 1 {
                out.push(PossibleDuplicate {
                    phone_digits: digits,
                    members,
                });
            }
        }
        Ok(out)
    }
}
