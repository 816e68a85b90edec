//! `agentctl`: the administrator's command line (see `hostagent::cli`).

fn main() -> std::process::ExitCode {
    hostagent::memory::configure();
    hostagent::cli::main()
}
