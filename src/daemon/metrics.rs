//! Prometheus metrics: operations by kind and result, durations, bytes, the last success of
//! each kind; the bytes snapshots read, found new and stored, and the last snapshot's dedup
//! ratio; what maintenance removed, freed and found. Served as text on `GET /metrics` when
//! `[metrics] listen` names a loopback address; off by default. docs/DAEMON.md defines each
//! series.
//!
//! The exposition is a handful of series, so it is written by hand over a minimal HTTP/1.1
//! responder rather than pulling in a metrics framework and an HTTP server.

use super::record::{OpKind, Phase};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Upper bounds (seconds) of the duration histogram's buckets.
const BUCKETS: [f64; 10] = [
    1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 43200.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct State {
    finished: BTreeMap<(&'static str, &'static str), u64>,
    durations: BTreeMap<&'static str, Histogram>,
    bytes: BTreeMap<&'static str, u64>,
    last_success: BTreeMap<&'static str, i64>,
    running: bool,
    schedules_skipped: BTreeMap<String, u64>,
    snapshot_read: u64,
    snapshot_new: u64,
    snapshot_stored: u64,
    /// total_bytes ÷ bytes_stored of the last snapshot saved.
    last_dedup_ratio: Option<f64>,
    snapshots_forgotten: u64,
    bytes_freed: u64,
    /// Problems the last check found (repository errors and damaged snapshots).
    last_check_problems: Option<u64>,
}

#[derive(Default)]
pub struct Metrics {
    state: Mutex<State>,
}

impl Metrics {
    pub fn operation_finished(&self, kind: OpKind, phase: Phase, seconds: f64, bytes: u64) {
        let mut s = self.state.lock().unwrap();
        *s.finished
            .entry((kind.as_str(), phase.as_str()))
            .or_default() += 1;
        let h = s.durations.entry(kind.as_str()).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
        *s.bytes.entry(kind.as_str()).or_default() += bytes;
    }

    pub fn set_last_success(&self, kind: OpKind, at: chrono::DateTime<chrono::Utc>) {
        let mut s = self.state.lock().unwrap();
        s.last_success.insert(kind.as_str(), at.timestamp());
    }

    pub fn set_running(&self, running: bool) {
        self.state.lock().unwrap().running = running;
    }

    /// A snapshot was saved (Completed or PartiallyFailed) with these statistics.
    pub fn snapshot_saved(&self, stats: &crate::repo::snapshot::SnapshotStats) {
        let mut s = self.state.lock().unwrap();
        s.snapshot_read += stats.bytes_read;
        s.snapshot_new += stats.bytes_new;
        s.snapshot_stored += stats.bytes_stored;
        s.last_dedup_ratio = Some(dedup_ratio(stats.total_bytes, stats.bytes_stored));
    }

    /// A maintenance removed a snapshot.
    pub fn snapshot_forgotten(&self) {
        self.state.lock().unwrap().snapshots_forgotten += 1;
    }

    /// A maintenance's prune deleted packs of this many bytes.
    pub fn bytes_freed(&self, bytes: u64) {
        self.state.lock().unwrap().bytes_freed += bytes;
    }

    /// A check ended: problems of the repository's objects, and damaged snapshots.
    pub fn check_done(&self, problems: u64, damaged_snapshots: u64) {
        self.state.lock().unwrap().last_check_problems = Some(problems + damaged_snapshots);
    }

    pub fn schedule_skipped(&self, schedule: &str) {
        let mut s = self.state.lock().unwrap();
        *s.schedules_skipped.entry(schedule.to_string()).or_default() += 1;
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let s = self.state.lock().unwrap();
        let mut out = String::new();
        out.push_str(
            "# HELP hostagent_operations_total Operations finished, by kind and final phase.\n\
             # TYPE hostagent_operations_total counter\n",
        );
        for ((kind, result), n) in &s.finished {
            let _ = writeln!(
                out,
                "hostagent_operations_total{{kind=\"{kind}\",result=\"{result}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP hostagent_operation_duration_seconds Duration of finished operations.\n\
             # TYPE hostagent_operation_duration_seconds histogram\n",
        );
        for (kind, h) in &s.durations {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "hostagent_operation_duration_seconds_bucket{{kind=\"{kind}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "hostagent_operation_duration_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {}\n\
                 hostagent_operation_duration_seconds_sum{{kind=\"{kind}\"}} {}\n\
                 hostagent_operation_duration_seconds_count{{kind=\"{kind}\"}} {}",
                h.count, h.sum, h.count
            );
        }
        out.push_str(
            "# HELP hostagent_operation_bytes_total Bytes processed by finished operations.\n\
             # TYPE hostagent_operation_bytes_total counter\n",
        );
        for (kind, n) in &s.bytes {
            let _ = writeln!(
                out,
                "hostagent_operation_bytes_total{{kind=\"{kind}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP hostagent_last_success_timestamp_seconds When an operation of the kind last completed.\n\
             # TYPE hostagent_last_success_timestamp_seconds gauge\n",
        );
        for (kind, t) in &s.last_success {
            let _ = writeln!(
                out,
                "hostagent_last_success_timestamp_seconds{{kind=\"{kind}\"}} {t}"
            );
        }
        let _ = write!(
            out,
            "# HELP hostagent_operation_running Whether an operation is running.\n\
             # TYPE hostagent_operation_running gauge\n\
             hostagent_operation_running {}\n",
            u8::from(s.running)
        );
        out.push_str(
            "# HELP hostagent_schedule_skipped_total Scheduled runs (snapshot schedules, and \"maintenance\") skipped because another operation ran.\n\
             # TYPE hostagent_schedule_skipped_total counter\n",
        );
        for (name, n) in &s.schedules_skipped {
            let _ = writeln!(
                out,
                "hostagent_schedule_skipped_total{{schedule=\"{name}\"}} {n}"
            );
        }
        for (name, help, n) in [
            (
                "hostagent_snapshot_read_bytes_total",
                "File content read by saved snapshots (unchanged files are not read).",
                s.snapshot_read,
            ),
            (
                "hostagent_snapshot_new_bytes_total",
                "Plaintext bytes of the new blobs of saved snapshots (what deduplication did not find stored).",
                s.snapshot_new,
            ),
            (
                "hostagent_snapshot_stored_bytes_total",
                "Bytes of the packs saved snapshots wrote to the repository (compressed, encrypted, with trees).",
                s.snapshot_stored,
            ),
            (
                "hostagent_maintenance_snapshots_removed_total",
                "Snapshots maintenance removed (expired or kept by no rule).",
                s.snapshots_forgotten,
            ),
            (
                "hostagent_maintenance_freed_bytes_total",
                "Bytes of the packs maintenance's prune deleted.",
                s.bytes_freed,
            ),
        ] {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {n}\n"
            );
        }
        if let Some(r) = s.last_dedup_ratio {
            let _ = write!(
                out,
                "# HELP hostagent_last_snapshot_dedup_ratio The last saved snapshot's size (total bytes of its files) divided by the bytes it stored; +Inf when it stored nothing.\n\
                 # TYPE hostagent_last_snapshot_dedup_ratio gauge\n\
                 hostagent_last_snapshot_dedup_ratio {}\n",
                prometheus_float(r)
            );
        }
        if let Some(n) = s.last_check_problems {
            let _ = write!(
                out,
                "# HELP hostagent_last_check_problems Problems the last maintenance check found: damaged or missing objects, unreadable and damaged snapshots (0: none).\n\
                 # TYPE hostagent_last_check_problems gauge\n\
                 hostagent_last_check_problems {n}\n"
            );
        }
        out
    }
}

/// How many bytes of the snapshot each byte it stored stands for: its files' total size
/// divided by the bytes of the packs it wrote. Infinite when it wrote nothing.
pub fn dedup_ratio(total_bytes: u64, bytes_stored: u64) -> f64 {
    if bytes_stored == 0 {
        f64::INFINITY
    } else {
        total_bytes as f64 / bytes_stored as f64
    }
}

/// A float in the exposition format ("+Inf" for infinity).
fn prometheus_float(v: f64) -> String {
    if v.is_infinite() && v > 0.0 {
        "+Inf".to_string()
    } else {
        format!("{v}")
    }
}

/// Serves `GET /metrics` until the listener is dropped with the task.
pub async fn serve(listener: tokio::net::TcpListener, metrics: std::sync::Arc<Metrics>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            // Read the request head (bounded in size and time); the body, if any, is ignored.
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while len < buf.len() {
                    let n = conn.read(&mut buf[len..]).await.ok()?;
                    if n == 0 {
                        break;
                    }
                    len += n;
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Some(())
            })
            .await;
            if !matches!(read, Ok(Some(()))) {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let mut parts = head.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (status, ctype, body) = if method == "GET" && (path == "/metrics" || path == "/") {
                (
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    metrics.render(),
                )
            } else {
                (
                    "404 Not Found",
                    "text/plain; charset=utf-8",
                    "only GET /metrics is served here\n".to_string(),
                )
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_ratio_is_total_over_stored_and_infinite_when_nothing_was_stored() {
        let m = Metrics::default();
        assert!(!m.render().contains("hostagent_last_snapshot_dedup_ratio"));
        let mut stats = crate::repo::snapshot::SnapshotStats {
            total_bytes: 1000,
            bytes_read: 600,
            bytes_new: 300,
            bytes_stored: 250,
            ..Default::default()
        };
        m.snapshot_saved(&stats);
        let text = m.render();
        assert!(
            text.contains("\nhostagent_last_snapshot_dedup_ratio 4\n"),
            "{text}"
        );
        assert!(
            text.contains("\nhostagent_snapshot_stored_bytes_total 250\n"),
            "{text}"
        );
        stats.bytes_stored = 0;
        m.snapshot_saved(&stats);
        let text = m.render();
        assert!(
            text.contains("\nhostagent_last_snapshot_dedup_ratio +Inf\n"),
            "{text}"
        );
        assert!(
            text.contains("\nhostagent_snapshot_read_bytes_total 1200\n"),
            "{text}"
        );
        assert!(
            text.contains("\nhostagent_snapshot_new_bytes_total 600\n"),
            "{text}"
        );
    }
}
