//! `agentd`: the node daemon. This build has no daemon mode yet; it reports so plainly
//! instead of pretending to run.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version" || a == "-V") {
        println!("agentd {}", env!("CARGO_PKG_VERSION"));
        return std::process::ExitCode::SUCCESS;
    }
    eprintln!(
        "agentd: the daemon is not available in this build; use `agentctl --repo DIR ...` for \
         standalone snapshots and restores"
    );
    std::process::ExitCode::from(1)
}
