//! Retention rules on made-up snapshot lists: which stay, which go, and why.

use chrono::{DateTime, Duration, TimeZone, Utc};
use hostagent::maintenance::retention::{GroupBy, KeepPolicy, apply};
use hostagent::repo::snapshot::SnapshotStats;
use hostagent::repo::{Id, Snapshot, SnapshotEntry, SnapshotStatus};

fn snap(
    n: u8,
    time: DateTime<Utc>,
    host: &str,
    tags: &[&str],
    expires: Option<DateTime<Utc>>,
) -> SnapshotEntry {
    SnapshotEntry {
        id: Id([n; 32]),
        snapshot: Snapshot {
            version: 1,
            time: time.to_rfc3339(),
            hostname: host.into(),
            paths: vec!["/var/onprem".into()],
            tags: tags.iter().map(|t| t.to_string()).collect(),
            name: None,
            parent: None,
            tree: Id([0; 32]),
            status: SnapshotStatus::Completed,
            stats: SnapshotStats::default(),
            errors: vec![],
            expires: expires.map(|t| t.to_rfc3339()),
            program_version: "test".into(),
        },
    }
}

fn t(d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, d, h, 0, 0).unwrap()
}

/// (id byte, kept, reasons) newest first, for one group.
fn outcome(g: &hostagent::maintenance::retention::GroupDecision) -> Vec<(u8, bool, String)> {
    g.decisions
        .iter()
        .map(|d| (d.entry.id.0[0], d.keep, d.reasons.join(", ")))
        .collect()
}

#[test]
fn keep_daily_keeps_the_newest_snapshot_of_each_day() {
    // Two per day on March 1..4 (4 = Wednesday).
    let list: Vec<_> = (1..=4u8)
        .flat_map(|d| {
            [
                snap(d * 10, t(d as u32, 6), "a", &[], None),
                snap(d * 10 + 1, t(d as u32, 18), "a", &[], None),
            ]
        })
        .collect();
    let policy = KeepPolicy {
        daily: 3,
        last: 1,
        ..Default::default()
    };
    let groups = apply(&list, &policy, GroupBy::default(), t(10, 0));
    assert_eq!(groups.len(), 1);
    assert_eq!(
        outcome(&groups[0]),
        vec![
            (41, true, "last snapshot, daily snapshot".into()),
            (40, false, "no rule keeps it".into()),
            (31, true, "daily snapshot".into()),
            (30, false, "no rule keeps it".into()),
            (21, true, "daily snapshot".into()),
            (20, false, "no rule keeps it".into()),
            (11, false, "no rule keeps it".into()),
            (10, false, "no rule keeps it".into()),
        ]
    );
}

#[test]
fn weekly_monthly_and_yearly_buckets() {
    // 2026-03-01 is a Sunday (ISO week 9); 03-02 starts week 10.
    let list = vec![
        snap(
            1,
            Utc.with_ymd_and_hms(2025, 12, 31, 0, 0, 0).unwrap(),
            "a",
            &[],
            None,
        ),
        snap(2, t(1, 12), "a", &[], None),
        snap(3, t(2, 12), "a", &[], None),
        snap(4, t(3, 12), "a", &[], None),
    ];
    let weekly = apply(
        &list,
        &KeepPolicy {
            weekly: 2,
            ..Default::default()
        },
        GroupBy::default(),
        t(20, 0),
    );
    let kept: Vec<u8> = weekly[0].kept().map(|d| d.entry.id.0[0]).collect();
    assert_eq!(kept, vec![4, 2]);
    let monthly = apply(
        &list,
        &KeepPolicy {
            monthly: 5,
            ..Default::default()
        },
        GroupBy::default(),
        t(20, 0),
    );
    let kept: Vec<u8> = monthly[0].kept().map(|d| d.entry.id.0[0]).collect();
    assert_eq!(kept, vec![4, 1]);
    let yearly = apply(
        &list,
        &KeepPolicy {
            yearly: 1,
            ..Default::default()
        },
        GroupBy::default(),
        t(20, 0),
    );
    let kept: Vec<u8> = yearly[0].kept().map(|d| d.entry.id.0[0]).collect();
    assert_eq!(kept, vec![4]);
}

#[test]
fn expired_snapshots_go_even_when_a_rule_would_keep_them() {
    let now = t(10, 0);
    let list = vec![
        snap(1, t(1, 0), "a", &[], Some(now - Duration::hours(1))),
        snap(2, t(2, 0), "a", &[], Some(now + Duration::hours(1))),
        snap(3, t(3, 0), "a", &[], None),
    ];
    // No keep rule: only expiry decides.
    let g = apply(&list, &KeepPolicy::default(), GroupBy::default(), now);
    let o = outcome(&g[0]);
    assert_eq!(o[0], (3, true, "no expiry, no keep rule".into()));
    assert_eq!(o[1], (2, true, "not expired".into()));
    assert_eq!(o[2].0, 1);
    assert!(!o[2].1);
    assert!(o[2].2.starts_with("expired "), "{}", o[2].2);
    // keep-last 3 would keep all three; the expired one still goes.
    let g = apply(
        &list,
        &KeepPolicy {
            last: 3,
            ..Default::default()
        },
        GroupBy::default(),
        now,
    );
    let kept: Vec<u8> = g[0].kept().map(|d| d.entry.id.0[0]).collect();
    assert_eq!(kept, vec![3, 2]);
}

#[test]
fn rules_apply_per_host_and_tag_group() {
    let list = vec![
        snap(1, t(1, 0), "a", &["daily"], None),
        snap(2, t(2, 0), "a", &["daily"], None),
        snap(3, t(1, 0), "b", &["daily"], None),
        snap(4, t(2, 0), "b", &["daily"], None),
        snap(5, t(1, 0), "a", &["weekly"], None),
        snap(6, t(2, 0), "a", &["weekly"], None),
    ];
    let policy = KeepPolicy {
        last: 1,
        ..Default::default()
    };
    let groups = apply(&list, &policy, GroupBy::default(), t(10, 0));
    let summary: Vec<(String, Vec<u8>)> = groups
        .iter()
        .map(|g| {
            (
                g.key.describe(),
                g.kept().map(|d| d.entry.id.0[0]).collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("host a, tags [daily]".to_string(), vec![2]),
            ("host a, tags [weekly]".to_string(), vec![6]),
            ("host b, tags [daily]".to_string(), vec![4]),
        ]
    );
    // Grouped by host only, tags no longer separate groups.
    let groups = apply(&list, &policy, GroupBy::parse("host").unwrap(), t(10, 0));
    assert_eq!(groups.len(), 2);
    assert!(GroupBy::parse("host,colour").is_err());
}

#[test]
fn keep_tag_keeps_tagged_snapshots() {
    let list = vec![
        snap(1, t(1, 0), "a", &["release"], None),
        snap(2, t(2, 0), "a", &["release"], None),
    ];
    let policy = KeepPolicy {
        tags: vec!["release".into()],
        ..Default::default()
    };
    let g = apply(&list, &policy, GroupBy::parse("host").unwrap(), t(10, 0));
    assert!(
        g[0].decisions
            .iter()
            .all(|d| d.keep && d.reasons == ["has tag release"])
    );
}

#[test]
fn ttl_parses_units_and_refuses_nonsense() {
    use hostagent::maintenance::retention::parse_ttl;
    assert_eq!(parse_ttl("90m").unwrap(), Duration::minutes(90));
    assert_eq!(parse_ttl("72h").unwrap(), Duration::hours(72));
    assert_eq!(parse_ttl("30d").unwrap(), Duration::days(30));
    assert_eq!(parse_ttl("2w").unwrap(), Duration::weeks(2));
    for bad in ["", "h", "0d", "-1d", "3y", "1.5d"] {
        let e = parse_ttl(bad).unwrap_err();
        assert!(
            e.message().contains("like 90m, 72h, 30d or 2w"),
            "{bad}: {e}"
        );
    }
}
