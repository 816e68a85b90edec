//! Prometheus metrics: operations by kind and result, durations, bytes, the last success of
//! each kind. Served as text on `GET /metrics` when `[metrics] listen` names a loopback
//! address; off by default.
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
            "# HELP hostagent_schedule_skipped_total Scheduled snapshots skipped because another operation ran.\n\
             # TYPE hostagent_schedule_skipped_total counter\n",
        );
        for (name, n) in &s.schedules_skipped {
            let _ = writeln!(
                out,
                "hostagent_schedule_skipped_total{{schedule=\"{name}\"}} {n}"
            );
        }
        out
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
