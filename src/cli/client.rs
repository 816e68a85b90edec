//! agentctl as a client of agentd: without `--repo`, commands go to the daemon's socket.
//! Nothing here calls the engine; the daemon does the work and this module shows it.

use super::output;
use super::{Cli, Command, EXIT_PARTIAL, MaintenanceTaskArg};
use crate::api;
use crate::api::agent_client::AgentClient;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use tonic::transport::{Channel, Endpoint, Uri};

/// Exit status when the daemon cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 11;
/// Exit status when the daemon refuses the caller.
pub const EXIT_DENIED: u8 = 13;

/// A failure of a client command, with the exit status it maps to.
pub struct ClientError {
    pub message: String,
    pub code: u8,
    pub grpc: Option<tonic::Code>,
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        let code = match s.code() {
            tonic::Code::PermissionDenied => EXIT_DENIED,
            tonic::Code::InvalidArgument => 2,
            tonic::Code::Cancelled => 130,
            _ => 1,
        };
        ClientError {
            message: format!("{} ({:?})", s.message(), s.code()),
            code,
            grpc: Some(s.code()),
        }
    }
}

async fn connect(socket: PathBuf) -> Result<AgentClient<Channel>, ClientError> {
    let path = socket.clone();
    // The URI is required by the API but unused: every connection goes to the socket.
    let channel = Endpoint::from_static("http://agentd.local")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| {
            let cause = std::error::Error::source(&e)
                .map(|c| c.to_string())
                .unwrap_or_else(|| e.to_string());
            if io_error_kind(&e) == Some(std::io::ErrorKind::PermissionDenied) {
                // The socket's mode (or its directory's) keeps this caller out: the same
                // refusal as agentd's own peer check, so the same exit status.
                return ClientError {
                    message: format!(
                        "may not use agentd at {}: {cause}; agentd is open to root and the \
                         members of its group (daemon.group in its configuration)",
                        socket.display()
                    ),
                    code: EXIT_DENIED,
                    grpc: None,
                };
            }
            ClientError {
                message: format!(
                    "cannot reach agentd at {}: {cause}; is it running (systemctl status agentd), \
                     and are you root or in its group? For a repository without the daemon, pass \
                     --repo",
                    socket.display()
                ),
                code: EXIT_UNREACHABLE,
                grpc: None,
            }
        })?;
    Ok(AgentClient::new(channel))
}

/// The kind of the I/O error somewhere in `e`'s chain of causes.
fn io_error_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = err.source();
    }
    None
}

/// Runs a command against the daemon.
pub fn run(cli: &Cli) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime starts");
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            if cli.global.json {
                println!(
                    "{}",
                    json!({"error": e.message, "code": e.grpc.map(|c| format!("{c:?}"))})
                );
            }
            eprintln!("agentctl: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

async fn dispatch(cli: &Cli) -> Result<ExitCode, ClientError> {
    let g = &cli.global;
    let usage = |m: &str| ClientError {
        message: m.to_string(),
        code: 2,
        grpc: None,
    };
    // Refuse before connecting, so a usage error is reported as one.
    match &cli.command {
        Command::Snapshot(a)
            if !a.paths.is_empty()
                || a.host.is_some()
                || a.name.is_some()
                || !a.excludes.is_empty()
                || a.exclude_caches =>
        {
            return Err(usage(
                "with the daemon, snapshots take the configured paths and host; to snapshot \
                 chosen paths directly, pass --repo DIR",
            ));
        }
        Command::NodeRestore(a)
            if a.recover
                || !a.units.is_empty()
                || !a.post_exec.is_empty()
                || a.no_post_steps
                || a.post_timeout.is_some()
                || a.unit_timeout.is_some()
                || a.state_dir.is_some()
                || a.systemd_address.is_some() =>
        {
            return Err(usage(
                "with the daemon, units, post-restore steps and their timeouts come from \
                 agentd's configuration ([node_restore] in agentd.toml), and agentd starts \
                 units an interrupted restore left stopped when it starts; to choose them \
                 here, run the restore directly with --repo DIR",
            ));
        }
        Command::Forget(_) | Command::Prune(_) | Command::Check(_) => {
            return Err(usage(
                "this command works on a repository directly: pass --repo DIR (or set \
                 HOSTAGENT_REPO); to have agentd forget, prune and check with its configured \
                 policy, run `agentctl maintenance`",
            ));
        }
        Command::Repo(_)
        | Command::Ls(_)
        | Command::Diff(_)
        | Command::Repair(_)
        | Command::Key(_)
        | Command::Unlock(_) => {
            return Err(usage(
                "this command works on a repository directly: pass --repo DIR (or set \
                 HOSTAGENT_REPO)",
            ));
        }
        _ => {}
    }
    let mut client = connect(g.socket.clone()).await?;
    match &cli.command {
        Command::Forget(_)
        | Command::Prune(_)
        | Command::Check(_)
        | Command::Repair(_)
        | Command::Key(_)
        | Command::Unlock(_) => Err(usage(
            "this command works on a repository directly: pass --repo DIR",
        )),
        Command::Snapshot(a) => {
            let op = client
                .start_snapshot(api::StartSnapshotRequest {
                    request_id: a.request_id.clone().unwrap_or_default(),
                    tags: a.tags.clone(),
                    ttl: a.ttl.clone().unwrap_or_default(),
                    full: a.force,
                })
                .await?
                .into_inner();
            started(cli, client, op, a.wait).await
        }
        Command::Restore(a) => {
            let op = client
                .start_restore(api::StartRestoreRequest {
                    request_id: a.request_id.clone().unwrap_or_default(),
                    snapshot: a.snapshot.clone(),
                    target: a.target.display().to_string(),
                    include: a.includes.iter().map(|p| p.display().to_string()).collect(),
                    delete: a.delete,
                    source_host: a.host.clone().unwrap_or_default(),
                })
                .await?
                .into_inner();
            started(cli, client, op, a.wait).await
        }
        Command::NodeRestore(a) => {
            let op = client
                .start_node_restore(api::StartNodeRestoreRequest {
                    request_id: a.request_id.clone().unwrap_or_default(),
                    snapshot: a.snapshot.clone().unwrap_or_else(|| "latest".into()),
                    target: a.target.display().to_string(),
                    source_host: a.source_host.clone().unwrap_or_default(),
                    source_path: a
                        .source_path
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    include: a.includes.iter().map(|p| p.display().to_string()).collect(),
                    dry_run: a.dry_run,
                    skip_safety_snapshot: a.no_safety_snapshot,
                })
                .await?
                .into_inner();
            started(cli, client, op, !a.no_wait).await
        }
        Command::Maintenance(a) => {
            let op = client
                .start_maintenance(api::StartMaintenanceRequest {
                    request_id: a.request_id.clone().unwrap_or_default(),
                    tasks: a
                        .tasks
                        .iter()
                        .map(|t| match t {
                            MaintenanceTaskArg::Forget => api::MaintenanceTask::Forget,
                            MaintenanceTaskArg::Prune => api::MaintenanceTask::Prune,
                            MaintenanceTaskArg::Check => api::MaintenanceTask::Check,
                        } as i32)
                        .collect(),
                    dry_run: a.dry_run,
                    check_read_data_subset: a.read_data_subset.clone().unwrap_or_default(),
                })
                .await?
                .into_inner();
            started(cli, client, op, a.wait).await
        }
        Command::Watch(a) => watch(cli, &mut client, &a.operation).await,
        Command::Cancel(a) => {
            let op = client
                .cancel_operation(api::CancelOperationRequest {
                    operation_id: a.operation.clone(),
                })
                .await?
                .into_inner();
            if g.json {
                println!("{}", op_json(&op));
            } else {
                println!("{}: {}", op.id, phase_name(op.phase));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Operations(a) => {
            let ops = client
                .list_operations(api::ListOperationsRequest { limit: a.limit })
                .await?
                .into_inner()
                .operations;
            if g.json {
                println!("{}", Value::Array(ops.iter().map(op_json).collect()));
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = ops
                .iter()
                .map(|o| {
                    vec![
                        o.id.clone(),
                        phase_name(o.phase),
                        o.trigger.clone(),
                        o.created.clone(),
                        short(&o.snapshot_id),
                        o.message.clone(),
                    ]
                })
                .collect();
            output::table(
                &["ID", "PHASE", "TRIGGER", "CREATED", "SNAPSHOT", "MESSAGE"],
                &rows,
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshots(a) => {
            let list = client
                .list_snapshots(api::ListSnapshotsRequest {
                    hostname: a.host.clone().unwrap_or_default(),
                    tag: a.tag.clone().unwrap_or_default(),
                })
                .await?
                .into_inner()
                .snapshots;
            if g.json {
                println!("{}", Value::Array(list.iter().map(snapshot_json).collect()));
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|s| {
                    let st = s.stats.unwrap_or_default();
                    vec![
                        short(&s.id),
                        s.time
                            .chars()
                            .take(19)
                            .collect::<String>()
                            .replace('T', " "),
                        s.name.clone(),
                        s.status.clone(),
                        st.files.to_string(),
                        output::bytes(st.total_bytes),
                        s.expires.clone(),
                    ]
                })
                .collect();
            output::table(
                &[
                    "ID",
                    "TIME (UTC)",
                    "NAME",
                    "STATUS",
                    "FILES",
                    "SIZE",
                    "EXPIRES",
                ],
                &rows,
            );
            println!("{} snapshots", rows.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Delete(a) => {
            for snapshot_id in &a.snapshots {
                let r = client
                    .delete_snapshot(api::DeleteSnapshotRequest {
                        snapshot_id: snapshot_id.clone(),
                    })
                    .await?
                    .into_inner();
                if g.json {
                    println!("{}", json!({"deleted": r.deleted_id}));
                } else {
                    println!("deleted snapshot {}", r.deleted_id);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status => {
            let s = client
                .get_status(api::GetStatusRequest {})
                .await?
                .into_inner();
            if g.json {
                println!("{}", status_json(&s));
                return Ok(ExitCode::SUCCESS);
            }
            println!("agentd {} on node {}", s.version, s.node);
            if s.repository_reachable {
                println!("repository: {} (reachable)", s.repository);
            } else {
                println!(
                    "repository: {} (NOT reachable: {})",
                    s.repository, s.repository_error
                );
            }
            match &s.running {
                Some(op) => println!(
                    "running: {} {} ({})",
                    op.id,
                    phase_name(op.phase),
                    op.progress.as_ref().map(|p| p.step.as_str()).unwrap_or("")
                ),
                None => println!("running: nothing"),
            }
            for l in &s.last_success {
                println!(
                    "last {} success: {} ({})",
                    kind_name(l.kind),
                    l.finished,
                    l.operation_id
                );
            }
            for sc in &s.schedules {
                println!("schedule {} ({}): next {}", sc.name, sc.cron, sc.next);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ls(_) | Command::Diff(_) | Command::Repo(_) => {
            Err(usage("this command needs --repo DIR"))
        }
    }
}

/// After a Start: print the operation, or follow it to its end with `--wait`.
async fn started(
    cli: &Cli,
    mut client: AgentClient<Channel>,
    op: api::Operation,
    wait: bool,
) -> Result<ExitCode, ClientError> {
    if wait {
        return watch(cli, &mut client, &op.id).await;
    }
    if cli.global.json {
        println!("{}", op_json(&op));
    } else {
        println!(
            "started operation {} ({}); follow it with `agentctl watch {}`",
            op.id,
            phase_name(op.phase),
            op.id
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Follows an operation to its end with a progress bar (on a terminal); the exit status
/// says how it ended.
async fn watch(
    cli: &Cli,
    client: &mut AgentClient<Channel>,
    id: &str,
) -> Result<ExitCode, ClientError> {
    let g = &cli.global;
    let mut stream = client
        .watch_operation(api::WatchOperationRequest {
            operation_id: id.to_string(),
        })
        .await?
        .into_inner();
    let bar = (!g.quiet && !g.json && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(id.to_string());
        bar
    });
    let mut last: Option<api::Operation> = None;
    let mut steps_shown = 0;
    while let Some(op) = stream.message().await? {
        // A node restore's steps are what its operator follows; the record lists them all,
        // so none is missed however late this wakes.
        if let Some(n) = op.node_restore.as_ref().filter(|_| !g.json && !g.quiet) {
            for step in n.steps.iter().skip(steps_shown) {
                let line = format!("{} {step}", chrono::Local::now().format("%H:%M:%S"));
                match &bar {
                    Some(bar) => bar.println(line),
                    None => println!("{line}"),
                }
            }
            steps_shown = steps_shown.max(n.steps.len());
        }
        if let (Some(bar), Some(p)) = (&bar, &op.progress) {
            bar.set_length(p.bytes_total);
            bar.set_position(p.bytes_done);
            bar.set_message(format!(
                "{}/{} files, {}",
                p.files_done, p.files_total, p.step
            ));
        }
        last = Some(op);
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let Some(op) = last else {
        return Err(ClientError {
            message: format!("agentd ended the watch of {id} without an answer"),
            code: 1,
            grpc: None,
        });
    };
    if g.json {
        println!("{}", op_json(&op));
    } else {
        println!("{} {}: {}", op.id, phase_name(op.phase), op.message);
        for h in &op.hooks {
            if h.exit_code != 0 || h.timed_out {
                eprintln!(
                    "hook {} {:?}: exit {}{}",
                    h.stage,
                    h.argv,
                    h.exit_code,
                    if h.timed_out { " (timed out)" } else { "" }
                );
            }
        }
        for e in &op.errors {
            eprintln!("error: {}: {}", e.path, e.error);
        }
        if let Some(n) = &op.node_restore {
            print_node_restore(n);
        }
        if let Some(m) = &op.maintenance {
            print_maintenance(m);
        }
    }
    Ok(ExitCode::from(match api::Phase::try_from(op.phase) {
        Ok(api::Phase::Completed) => 0,
        Ok(api::Phase::PartiallyFailed) => EXIT_PARTIAL,
        Ok(api::Phase::Canceled) => 130,
        _ => 1,
    }))
}

/// What a node restore did, after its one-line outcome.
fn print_node_restore(n: &api::NodeRestoreResult) {
    if n.dry_run {
        for (mark, paths, count) in [
            ("+", &n.added, n.added_count),
            ("M", &n.changed, n.changed_count),
            ("-", &n.removed, n.removed_count),
        ] {
            for p in paths {
                println!("{mark} {p}");
            }
            if count > paths.len() as u64 {
                println!("{mark} ... and {} more", count - paths.len() as u64);
            }
        }
        return;
    }
    for s in &n.post_steps {
        println!(
            "post-restore step {:?} ({}): {}{}",
            s.name,
            s.argv.join(" "),
            if s.success { "ok, " } else { "FAILED, " },
            s.status
        );
        let out = s.output.trim();
        if !s.success && !out.is_empty() {
            for line in out.lines().take(20) {
                eprintln!("  {line}");
            }
        }
    }
    if !n.failed_step.is_empty() {
        eprintln!("failed step: {}", n.failed_step);
    }
}

/// What a maintenance did, after its one-line outcome.
fn print_maintenance(m: &api::MaintenanceResult) {
    let would = if m.dry_run { "would be " } else { "" };
    if m.tasks.iter().any(|t| t == "forget") {
        println!("policy: {}", m.policy);
        for s in &m.removed {
            println!(
                "{would}removed snapshot {} ({}, {}, {}): {}",
                short(&s.id),
                s.name,
                s.time,
                s.hostname,
                s.reason
            );
        }
    }
    for p in &m.prune_problems {
        eprintln!("prune: {p}");
    }
    for w in &m.check_warnings {
        println!("check warning: {w}");
    }
    for e in &m.check_errors {
        eprintln!("check error: {e}");
    }
    for d in &m.damaged_snapshots {
        eprintln!(
            "check: snapshot {} ({}, {}) cannot be fully restored:",
            short(&d.id),
            d.time,
            d.hostname
        );
        for x in &d.damage {
            eprintln!("    {x}");
        }
    }
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

fn phase_name(p: i32) -> String {
    api::Phase::try_from(p)
        .map(|p| {
            let s = p.as_str_name().trim_start_matches("PHASE_");
            // PHASE_IN_PROGRESS -> InProgress, as Velero writes phases.
            s.split('_')
                .map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map(|f| f.to_string() + &c.as_str().to_ascii_lowercase())
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_else(|_| format!("phase {p}"))
}

fn kind_name(k: i32) -> String {
    api::OperationKind::try_from(k)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("OPERATION_KIND_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| format!("kind {k}"))
}

fn reason_name(r: i32) -> Value {
    match api::FailureReason::try_from(r) {
        Ok(api::FailureReason::Unspecified) => Value::Null,
        Ok(r) => Value::String(r.as_str_name().trim_start_matches("FAILURE_REASON_").into()),
        Err(_) => Value::String(format!("reason {r}")),
    }
}

fn op_json(o: &api::Operation) -> Value {
    let p = o.progress.clone().unwrap_or_default();
    json!({
        "id": o.id, "kind": kind_name(o.kind), "phase": phase_name(o.phase),
        "failure_reason": reason_name(o.failure_reason), "message": o.message,
        "progress": {
            "step": p.step, "files_done": p.files_done, "files_total": p.files_total,
            "bytes_done": p.bytes_done, "bytes_total": p.bytes_total, "errors": p.errors,
        },
        "created": o.created, "started": o.started, "finished": o.finished,
        "request_id": o.request_id, "trigger": o.trigger, "schedule": o.schedule,
        "snapshot_id": o.snapshot_id, "snapshot_name": o.snapshot_name, "target": o.target,
        "hooks": o.hooks.iter().map(|h| json!({
            "stage": h.stage, "argv": h.argv, "exit_code": h.exit_code,
            "timed_out": h.timed_out, "output": h.output, "duration_ms": h.duration_ms,
            "continued": h.continued,
        })).collect::<Vec<_>>(),
        "errors": o.errors.iter().map(|e| json!({"path": e.path, "error": e.error})).collect::<Vec<_>>(),
        "node_restore": o.node_restore.as_ref().map(|n| json!({
            "failed_step": n.failed_step, "safety_snapshot_id": n.safety_snapshot_id,
            "stopped_units": n.stopped_units, "started_units": n.started_units,
            "post_steps": n.post_steps.iter().map(|s| json!({
                "name": s.name, "argv": s.argv, "success": s.success, "status": s.status,
                "output": s.output,
            })).collect::<Vec<_>>(),
            "steps": n.steps, "dry_run": n.dry_run, "units_to_stop": n.units_to_stop,
            "added": n.added, "changed": n.changed, "removed": n.removed,
            "added_count": n.added_count, "changed_count": n.changed_count,
            "removed_count": n.removed_count,
        })),
        "maintenance": o.maintenance.as_ref().map(maintenance_json),
    })
}

fn maintenance_json(m: &api::MaintenanceResult) -> Value {
    json!({
        "tasks": m.tasks, "dry_run": m.dry_run, "steps": m.steps, "policy": m.policy,
        "snapshots_kept": m.snapshots_kept, "snapshots_expired": m.snapshots_expired,
        "snapshots_forgotten": m.snapshots_forgotten,
        "removed": m.removed.iter().map(|s| json!({
            "id": s.id, "name": s.name, "time": s.time, "hostname": s.hostname,
            "reason": s.reason,
        })).collect::<Vec<_>>(),
        "packs_deleted": m.packs_deleted, "bytes_freed": m.bytes_freed,
        "packs_announced": m.packs_announced, "bytes_announced": m.bytes_announced,
        "missing_blobs": m.missing_blobs, "prune_problems": m.prune_problems,
        "checked": m.checked, "check_ok": m.check_ok,
        "check_packs_read": m.check_packs_read, "check_bytes_read": m.check_bytes_read,
        "check_errors": m.check_errors, "check_warnings": m.check_warnings,
        "damaged_snapshots": m.damaged_snapshots.iter().map(|d| json!({
            "id": d.id, "time": d.time, "hostname": d.hostname, "damage": d.damage,
        })).collect::<Vec<_>>(),
    })
}

fn snapshot_json(s: &api::Snapshot) -> Value {
    let st = s.stats.unwrap_or_default();
    json!({
        "id": s.id, "name": s.name, "time": s.time, "hostname": s.hostname, "paths": s.paths,
        "tags": s.tags, "status": s.status, "expires": s.expires, "parent": s.parent,
        "stats": {
            "files": st.files, "dirs": st.dirs, "files_new": st.files_new,
            "files_changed": st.files_changed, "files_unmodified": st.files_unmodified,
            "errors": st.errors, "total_bytes": st.total_bytes, "bytes_read": st.bytes_read,
            "bytes_new": st.bytes_new, "bytes_stored": st.bytes_stored,
            "duration_ms": st.duration_ms,
        },
        "program_version": s.program_version,
    })
}

fn status_json(s: &api::AgentStatus) -> Value {
    json!({
        "version": s.version, "node": s.node, "repository": s.repository,
        "repository_reachable": s.repository_reachable, "repository_error": s.repository_error,
        "last_success": s.last_success.iter().map(|l| json!({
            "kind": kind_name(l.kind), "operation_id": l.operation_id, "finished": l.finished,
        })).collect::<Vec<_>>(),
        "running": s.running.as_ref().map(op_json),
        "schedules": s.schedules.iter().map(|sc| json!({
            "name": sc.name, "cron": sc.cron, "next": sc.next,
        })).collect::<Vec<_>>(),
    })
}
