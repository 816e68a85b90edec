//! Deployment as an administrator does it: the Ansible role (ansible/) applied over SSH to
//! two lab nodes booted with systemd-nspawn, agentd running under the hardened
//! systemd/agentd.service. The steps and what each one checks are in tests/ansible/run.sh;
//! this test runs it with the binaries built for this test run.

use std::path::Path;
use std::process::Command;

#[test]
fn ansible_role_installs_upgrades_and_restores_under_the_hardened_unit() {
    let bin = Path::new(env!("CARGO_BIN_EXE_agentd")).parent().unwrap();
    assert!(
        bin.join("agentctl").exists(),
        "agentctl is not built next to agentd"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ansible/run.sh");
    let out = Command::new(script).arg(bin).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tests/ansible/run.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for expected in [
        "a member of group hostagent is answered, a non-member refused (13)",
        "systemd-analyze verify /etc/systemd/system/agentd.service: clean",
        "Overall exposure level for agentd.service",
        "(README: ",
        "restored tree identical",
        "node restore under the unit: units and post-restore step from the role",
        "handler polls while the snapshot ran",
        "socket activation: agentd started by a member's connection",
        "deploy test passed",
    ] {
        assert!(stdout.contains(expected), "{expected:?} not in:\n{stdout}");
    }
}
