//! Scheduled snapshots and maintenance: standard five-field cron expressions ("0 2 * * *"),
//! evaluated in UTC. A schedule that fires while another operation runs is skipped (logged
//! and counted), not queued: the next run comes at its next time.

use super::Agent;
use super::config::MAINTENANCE_SCHEDULE;
use super::record::{Request, Trigger};
use chrono::{DateTime, Utc};
use croner::Cron;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Parses a five-field expression; the error says what is expected.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    if expr.split_whitespace().count() != 5 {
        return Err(format!(
            "{expr:?} is not a five-field cron expression (minute hour day-of-month month \
             day-of-week, e.g. \"0 2 * * *\")"
        ));
    }
    Cron::from_str(expr).map_err(|e| format!("{expr:?} is not a valid cron expression: {e}"))
}

pub fn next_after(expr: &str, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    parse_cron(expr).ok()?.find_next_occurrence(&t, false).ok()
}

/// What a schedule starts.
#[derive(Clone)]
enum Fires {
    Snapshot(super::config::Schedule),
    Maintenance,
}

/// A configured schedule: its name, its cron expression and what it starts.
#[derive(Clone)]
struct Entry {
    name: String,
    cron: String,
    fires: Fires,
}

/// The snapshot schedules, then the maintenance schedule if one is configured.
fn entries(config: &super::config::Config) -> Vec<Entry> {
    let mut out: Vec<Entry> = config
        .schedules
        .iter()
        .map(|s| Entry {
            name: s.name.clone(),
            cron: s.cron.clone(),
            fires: Fires::Snapshot(s.clone()),
        })
        .collect();
    if let Some(cron) = &config.maintenance.cron {
        out.push(Entry {
            name: MAINTENANCE_SCHEDULE.to_string(),
            cron: cron.clone(),
            fires: Fires::Maintenance,
        });
    }
    out
}

/// Each schedule's name, cron expression and next time after `now` (for GetStatus).
pub fn status(
    config: &super::config::Config,
    now: DateTime<Utc>,
) -> Vec<(String, String, Option<DateTime<Utc>>)> {
    entries(config)
        .into_iter()
        .map(|e| {
            let next = next_after(&e.cron, now);
            (e.name, e.cron, next)
        })
        .collect()
}

/// Fires the configured schedules until the task is dropped.
pub async fn run(agent: Arc<Agent>) {
    let schedules = entries(&agent.config);
    if schedules.is_empty() {
        return;
    }
    let now = Utc::now();
    let mut next: Vec<Option<DateTime<Utc>>> =
        schedules.iter().map(|s| next_after(&s.cron, now)).collect();
    for (s, n) in schedules.iter().zip(&next) {
        tracing::info!(schedule = %s.name, cron = %s.cron, next = ?n, "schedule loaded");
    }
    loop {
        let now = Utc::now();
        let soonest = next.iter().flatten().min().copied();
        let Some(soonest) = soonest else { return };
        if soonest > now {
            // Sleep in short steps so a wall-clock jump is noticed within a minute.
            let wait = (soonest - now)
                .to_std()
                .unwrap_or_default()
                .min(Duration::from_secs(30));
            tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
            continue;
        }
        for (i, s) in schedules.iter().enumerate() {
            if next[i].is_some_and(|t| t <= now) {
                fire(&agent, s);
                next[i] = next_after(&s.cron, now);
            }
        }
    }
}

fn fire(agent: &Arc<Agent>, s: &Entry) {
    let (request, what) = match &s.fires {
        Fires::Snapshot(sched) => (
            Request::Snapshot {
                tags: vec![format!("schedule={}", sched.name)],
                ttl: sched.ttl.map(|d| d.0.as_secs()),
                full: false,
            },
            "snapshot",
        ),
        Fires::Maintenance => (
            super::maintenance::configured_request(&agent.config.maintenance),
            "maintenance",
        ),
    };
    match agent
        .ops
        .begin(request, None, Trigger::Scheduled, Some(s.name.clone()))
    {
        Ok((rec, Some(progress))) => {
            tracing::info!(schedule = %s.name, operation_id = %rec.id, "scheduled {what} started");
            super::jobs::spawn(agent.clone(), rec, progress);
        }
        Ok((_, None)) => {}
        Err(e) => {
            agent.metrics.schedule_skipped(&s.name);
            tracing::warn!(schedule = %s.name, error = %e, "scheduled {what} skipped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_fields_in_utc() {
        let t = DateTime::parse_from_rfc3339("2025-03-04T01:59:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let n = next_after("0 2 * * *", t).unwrap();
        assert_eq!(n.to_rfc3339(), "2025-03-04T02:00:00+00:00");
        assert!(parse_cron("0 0 2 * * *").is_err());
        assert!(parse_cron("61 * * * *").is_err());
    }
}
