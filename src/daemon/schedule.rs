//! Scheduled snapshots: standard five-field cron expressions ("0 2 * * *"), evaluated in
//! UTC. A schedule that fires while another operation runs is skipped (logged and counted),
//! not queued: the next run comes at its next time.

use super::Agent;
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

/// Fires the configured schedules until the task is dropped.
pub async fn run(agent: Arc<Agent>) {
    let schedules = agent.config.schedules.clone();
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

fn fire(agent: &Arc<Agent>, s: &super::config::Schedule) {
    let request = Request::Snapshot {
        tags: vec![format!("schedule={}", s.name)],
        ttl: s.ttl.map(|d| d.0.as_secs()),
        full: false,
    };
    match agent
        .ops
        .begin(request, None, Trigger::Scheduled, Some(s.name.clone()))
    {
        Ok((rec, Some(progress))) => {
            tracing::info!(schedule = %s.name, operation_id = %rec.id, "scheduled snapshot started");
            super::jobs::spawn(agent.clone(), rec, progress);
        }
        Ok((_, None)) => {}
        Err(e) => {
            agent.metrics.schedule_skipped(&s.name);
            tracing::warn!(schedule = %s.name, error = %e, "scheduled snapshot skipped");
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
