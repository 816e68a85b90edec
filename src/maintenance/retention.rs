//! Retention: which snapshots to forget.
//!
//! Two sources of decisions, applied per group of snapshots (by default, same host and
//! same tags):
//! - **Expiry.** A snapshot whose `expires` time has passed is forgotten, whatever the keep
//!   rules say: the TTL was set by whoever took it (the orchestrator's backup TTL), and it is
//!   the one explicit statement of how long the data may be kept.
//! - **Keep rules**, like restic's: the newest N snapshots, and the newest snapshot of each
//!   of the last N hours, days, ISO weeks, months and years that have one; snapshots with a
//!   kept tag. A snapshot no rule keeps is forgotten. With no rule given, every unexpired
//!   snapshot is kept.
//!
//! Time buckets are UTC, so that nodes in different time zones agree on what a "day" is.
//! Forgetting removes manifests only; the data goes with the next prunes.

use crate::error::{Error, Result};
use crate::repo::snapshot::snapshot_key;
use crate::repo::{Id, Repository, SnapshotEntry};
use chrono::{DateTime, Datelike, Timelike, Utc};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    /// Snapshots with any of these tags are kept.
    pub tags: Vec<String>,
}

impl KeepPolicy {
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.tags.is_empty()
    }

    /// "keep 3 latest, 7 daily snapshots", for the report.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (n, what) in [
            (self.last, "latest"),
            (self.hourly, "hourly"),
            (self.daily, "daily"),
            (self.weekly, "weekly"),
            (self.monthly, "monthly"),
            (self.yearly, "yearly"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        let mut s = if parts.is_empty() {
            String::from("keep every unexpired snapshot")
        } else {
            format!("keep {} snapshots", parts.join(", "))
        };
        if !self.tags.is_empty() {
            s.push_str(&format!(", snapshots tagged {}", self.tags.join(" or ")));
        }
        s.push_str("; forget expired snapshots");
        s
    }
}

/// What snapshots are grouped by before the rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupBy {
    pub host: bool,
    pub tags: bool,
    pub paths: bool,
}

impl Default for GroupBy {
    fn default() -> Self {
        GroupBy {
            host: true,
            tags: true,
            paths: false,
        }
    }
}

impl GroupBy {
    /// Parses "host,tags", "host,paths", "" (one group)...
    pub fn parse(s: &str) -> Result<GroupBy> {
        let mut g = GroupBy {
            host: false,
            tags: false,
            paths: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "host" => g.host = true,
                "tags" => g.tags = true,
                "paths" => g.paths = true,
                other => {
                    return Err(Error::invalid(format!(
                        "--group-by: unknown field {other:?}; use host, tags and/or paths, \
                         comma-separated"
                    )));
                }
            }
        }
        Ok(g)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupKey {
    pub host: Option<String>,
    pub tags: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
}

impl GroupKey {
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(h) = &self.host {
            parts.push(format!("host {h}"));
        }
        if let Some(t) = &self.tags {
            parts.push(format!("tags [{}]", t.join(",")));
        }
        if let Some(p) = &self.paths {
            parts.push(format!("paths [{}]", p.join(",")));
        }
        if parts.is_empty() {
            "all snapshots".to_string()
        } else {
            parts.join(", ")
        }
    }
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub entry: SnapshotEntry,
    pub keep: bool,
    /// Why it is kept ("last snapshot", "daily snapshot"...) or removed ("expired ...").
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct GroupDecision {
    pub key: GroupKey,
    /// Newest first.
    pub decisions: Vec<Decision>,
}

impl GroupDecision {
    pub fn kept(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| d.keep)
    }
    pub fn removed(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| !d.keep)
    }
}

fn group_key(e: &SnapshotEntry, by: GroupBy) -> GroupKey {
    let s = &e.snapshot;
    let mut tags = s.tags.clone();
    tags.sort();
    tags.dedup();
    let mut paths = s.paths.clone();
    paths.sort();
    GroupKey {
        host: by.host.then(|| s.hostname.clone()),
        tags: by.tags.then_some(tags),
        paths: by.paths.then_some(paths),
    }
}

type Bucketer = fn(&DateTime<Utc>) -> i64;

fn buckets() -> [(&'static str, Bucketer); 5] {
    [
        ("hourly", |t| {
            (t.year() as i64 * 10000 + t.ordinal() as i64) * 100 + t.hour() as i64
        }),
        ("daily", |t| t.year() as i64 * 10000 + t.ordinal() as i64),
        ("weekly", |t| {
            let w = t.iso_week();
            w.year() as i64 * 100 + w.week() as i64
        }),
        ("monthly", |t| t.year() as i64 * 100 + t.month() as i64),
        ("yearly", |t| t.year() as i64),
    ]
}

/// Decides, per group, which snapshots stay and why.
pub fn apply(
    snapshots: &[SnapshotEntry],
    policy: &KeepPolicy,
    by: GroupBy,
    now: DateTime<Utc>,
) -> Vec<GroupDecision> {
    let mut groups: std::collections::BTreeMap<GroupKey, Vec<SnapshotEntry>> = Default::default();
    for e in snapshots {
        groups.entry(group_key(e, by)).or_default().push(e.clone());
    }
    let counts = [
        policy.hourly,
        policy.daily,
        policy.weekly,
        policy.monthly,
        policy.yearly,
    ];
    let mut out = Vec::new();
    for (key, mut list) in groups {
        list.sort_by(|a, b| {
            (b.snapshot.time(), &b.snapshot.time).cmp(&(a.snapshot.time(), &a.snapshot.time))
        });
        let mut left = counts;
        let mut last_bucket: [Option<i64>; 5] = [None; 5];
        let mut kept_last = 0u32;
        let mut decisions = Vec::new();
        for e in list {
            let s = e.snapshot.clone();
            let mut reasons = Vec::new();
            if let Some(exp) = &s.expires {
                match DateTime::parse_from_rfc3339(exp) {
                    Ok(t) if t.with_timezone(&Utc) <= now => {
                        let reasons = vec![format!("expired {exp}")];
                        decisions.push(Decision {
                            entry: e,
                            keep: false,
                            reasons,
                        });
                        continue;
                    }
                    Ok(_) => {}
                    Err(_) => reasons.push(format!("expiry {exp:?} unreadable")),
                }
            }
            let Some(t) = s.time() else {
                reasons.push("time unreadable".to_string());
                decisions.push(Decision {
                    entry: e,
                    keep: true,
                    reasons,
                });
                continue;
            };
            if policy.is_empty() {
                reasons.push(if s.expires.is_some() {
                    "not expired".to_string()
                } else {
                    "no expiry, no keep rule".to_string()
                });
            }
            if kept_last < policy.last {
                kept_last += 1;
                reasons.push("last snapshot".to_string());
            }
            for (i, (name, bucket)) in buckets().iter().enumerate() {
                if left[i] == 0 {
                    continue;
                }
                let b = bucket(&t);
                if last_bucket[i] != Some(b) {
                    last_bucket[i] = Some(b);
                    left[i] -= 1;
                    reasons.push(format!("{name} snapshot"));
                }
            }
            for tag in &policy.tags {
                if s.tags.contains(tag) {
                    reasons.push(format!("has tag {tag}"));
                }
            }
            let keep = !reasons.is_empty();
            if !keep {
                reasons.push("no rule keeps it".to_string());
            }
            decisions.push(Decision {
                entry: e,
                keep,
                reasons,
            });
        }
        out.push(GroupDecision { key, decisions });
    }
    out
}

/// Parses a time to live: a number and a unit, m(inutes), h(ours), d(ays) or w(eeks):
/// "90m", "72h", "30d", "2w".
pub fn parse_ttl(s: &str) -> Result<chrono::Duration> {
    let bad = || {
        Error::invalid(format!(
            "--ttl {s:?}: give a number and a unit, like 90m, 72h, 30d or 2w"
        ))
    };
    let t = s.trim();
    let unit = t.chars().last().ok_or_else(bad)?;
    let n: i64 = t[..t.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    if n <= 0 {
        return Err(bad());
    }
    match unit {
        'm' => chrono::Duration::try_minutes(n),
        'h' => chrono::Duration::try_hours(n),
        'd' => chrono::Duration::try_days(n),
        'w' => chrono::Duration::try_weeks(n),
        _ => None,
    }
    .ok_or_else(bad)
}

/// Removes one snapshot manifest. Its data stays until prunes find it unused.
pub fn delete_snapshot(repo: &Repository, id: &Id) -> Result<()> {
    repo.store()
        .delete(&snapshot_key(id))
        .map_err(|e| Error::from(e).context(format!("cannot delete snapshot {}", id.short())))
}

/// Applies the decisions: deletes every snapshot not kept. Returns how many were removed.
pub fn forget(repo: &Repository, groups: &[GroupDecision]) -> Result<usize> {
    let mut n = 0;
    for g in groups {
        for d in g.removed() {
            delete_snapshot(repo, &d.entry.id)?;
            n += 1;
        }
    }
    Ok(n)
}
