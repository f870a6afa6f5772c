//! deploy/ansible end to end: deploy/tests/run.py packs this build of wick as releases
//! (scripts/build-release.sh --binary), starts a private sshd on loopback and drives the
//! role over it against this machine with two hosts (default and overridden paths):
//! preflight failures, fresh deploy, upgrade, a broken release rolled back while the next
//! host stays untouched, a SIGKILL answered by the supervisor, a second run that changes
//! nothing. It installs to /opt/wick, /etc/wick and friends and removes them after.
//!
//! Needs root, openssh-server, supervisor, systemd (systemd-analyze), openssl, binutils
//! and the Ansible venv (scripts/ansible-venv.sh); a missing one fails the test saying how
//! to install it.

use std::process::Command;
use std::time::Instant;

#[test]
fn ansible_role_deploys_upgrades_rolls_back_and_is_idempotent() {
    let root = wick_test_support::repo_root();
    let ansible_bin = std::env::var("WICK_ANSIBLE_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join(".cache/ansible-venv/bin"));
    assert!(
        ansible_bin.join("ansible-playbook").is_file(),
        "{} has no ansible-playbook: run scripts/ansible-venv.sh (or set WICK_ANSIBLE_BIN)",
        ansible_bin.display()
    );
    let start = Instant::now();
    let out = Command::new("python3")
        .arg(root.join("deploy/tests/run.py"))
        .arg("--wick")
        .arg(env!("CARGO_BIN_EXE_wick"))
        .arg("--model")
        .arg(wick_test_support::smollm2_gguf())
        .arg("--tiny-model")
        .arg(wick_test_support::tiny::tiny_dir().join("llama3-tied"))
        .arg("--ansible-bin")
        .arg(&ansible_bin)
        .output()
        .expect("run python3 deploy/tests/run.py (python3 is required)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("deploy checks passed"),
        "deploy/tests/run.py failed ({:?}, after {:.0} s):\n{stdout}\n{stderr}",
        out.status,
        start.elapsed().as_secs_f64()
    );
    eprintln!("{}", stdout.lines().last().unwrap_or_default());
}
