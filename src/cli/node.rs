//! `agentctl --repo DIR node-restore`: the node restore run directly (without the daemon),
//! for administrators and drills. Without `--repo`, agentd runs it (`client.rs`).

use super::commands::open;
use super::{Global, NodeRestoreArgs};
use crate::error::Result;
use crate::node_restore::{self, NodeRestoreOptions, PostStep};
use crate::service::Systemd;
use std::process::ExitCode;
use std::time::Duration;

pub fn run(g: &Global, a: &NodeRestoreArgs) -> Result<ExitCode> {
    let systemd = match &a.systemd_address {
        Some(addr) => Systemd::at_address(addr)?,
        None => Systemd::system()?,
    };
    let unit_timeout = Duration::from_secs(a.unit_timeout.unwrap_or(90));
    let post_timeout = Duration::from_secs(a.post_timeout.unwrap_or(60));
    let state_dir = a
        .state_dir
        .clone()
        .unwrap_or_else(|| "/var/lib/hostagent".into());
    if a.recover {
        let started = node_restore::state::recover(&state_dir, &systemd, unit_timeout)?;
        if g.json {
            println!("{}", serde_json::json!({ "started_units": started }));
        } else if started.is_empty() {
            println!("no units were left stopped");
        } else {
            println!("started again: {}", started.join(", "));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut repo = open(g)?;
    let snapshot = a.snapshot.as_deref().unwrap_or("latest");
    let mut opts = NodeRestoreOptions::new(snapshot, &a.target, &state_dir);
    opts.source_host = a.source_host.clone();
    opts.source_path = a.source_path.clone();
    opts.includes = a.includes.clone();
    if !a.units.is_empty() {
        opts.units = a.units.clone();
    }
    if a.no_post_steps {
        opts.post_steps.clear();
    } else if !a.post_exec.is_empty() {
        opts.post_steps = a
            .post_exec
            .iter()
            .map(|cmd| PostStep {
                name: format!("post-restore step `{cmd}`"),
                argv: vec!["sh".into(), "-c".into(), cmd.clone()],
                timeout: post_timeout,
            })
            .collect();
    } else {
        for s in &mut opts.post_steps {
            s.timeout = post_timeout;
        }
    }
    opts.unit_timeout = unit_timeout;
    opts.safety_snapshot = !a.no_safety_snapshot;

    if a.dry_run {
        let plan = node_restore::dry_run_plan(&repo, &systemd, &opts)?;
        if g.json {
            println!("{}", serde_json::to_string(&plan).expect("serializes"));
        } else {
            for p in &plan.added {
                println!("+ {}", p.display());
            }
            for p in &plan.changed {
                println!("M {}", p.display());
            }
            for p in &plan.removed {
                println!("- {}", p.display());
            }
            println!(
                "dry run of snapshot {}: {} added, {} changed, {} removed; units to stop: {}",
                &plan.snapshot[..8],
                plan.added.len(),
                plan.changed.len(),
                plan.removed.len(),
                if plan.units_to_stop.is_empty() {
                    "none".to_string()
                } else {
                    plan.units_to_stop.join(", ")
                }
            );
        }
        return Ok(ExitCode::SUCCESS);
    }

    match node_restore::run(&mut repo, &systemd, &opts) {
        Ok(report) => {
            if g.json {
                println!(
                    "{}",
                    serde_json::json!({ "status": "Completed", "report": report })
                );
            } else {
                println!(
                    "node restore of {} from snapshot {} completed; units stopped and started again: {}",
                    a.target.display(),
                    report.snapshot.map(|i| i.short()).unwrap_or_default(),
                    if report.stopped_units.is_empty() {
                        "none".to_string()
                    } else {
                        report.stopped_units.join(", ")
                    }
                );
                if let Some(s) = report.safety_snapshot {
                    println!(
                        "safety snapshot {} (tag pre-restore) holds the tree as it was",
                        s.short()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(f) => {
            if g.json {
                println!(
                    "{}",
                    serde_json::json!({ "status": "Failed", "reason": f.reason, "error": f.error.message(), "report": f.report })
                );
            }
            eprintln!("agentctl: node restore failed: {}: {}", f.reason, f.error);
            if !f.report.stopped_units.is_empty() {
                eprintln!(
                    "agentctl: units stopped and started again: {}",
                    f.report.started_units.join(", ")
                );
            }
            Ok(ExitCode::from(1))
        }
    }
}
