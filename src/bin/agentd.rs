//! `agentd`: the node daemon (see `hostagent::daemon`).

fn main() -> std::process::ExitCode {
    hostagent::memory::configure();
    hostagent::daemon::main()
}
