//! `agentd`: the node daemon (see `hostagent::daemon`).

fn main() -> std::process::ExitCode {
    hostagent::daemon::main()
}
