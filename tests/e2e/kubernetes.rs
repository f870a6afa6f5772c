//! deploy/kubernetes and deploy/docker, checked offline by the real tools
//! (deploy/kubernetes/tests/validate.py): `kubectl kustomize` renders the KEDA install
//! and the HPA overlay; every built-in object validates strictly against the Kubernetes
//! API schemas kubernetes-validate ships, and the KEDA ScaledObject and the
//! ServiceMonitor against their CRDs' published schemas (@kubernetes-models/keda and
//! @kubernetes-models/prometheus-operator); the Deployment keeps its promises (GPU, probes,
//! drain, security context, volumes, Secret, replica id) and passes only flags this
//! `wick serve` has; broken copies are rejected by each validator. The metric its KEDA
//! query reads is checked by the monitoring test, with every other query under deploy/.
//!
//! Needs kubectl (scripts/install-test-deps.sh) and the validators of
//! deploy/kubernetes/tests/setup.sh (both run by scripts/test.sh); a missing one fails
//! the test naming it.

use std::process::Command;

#[test]
fn kubernetes_manifests_render_and_validate_against_the_published_schemas() {
    let root = wick_test_support::repo_root();
    let setup = "deploy/kubernetes/tests/setup.sh";
    let python = root.join(".cache/kubernetes-venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run {setup}",
        python.display()
    );
    assert!(
        root.join(".cache/kubernetes-npm/node_modules/@kubernetes-models")
            .is_dir(),
        ".cache/kubernetes-npm is missing: run {setup}"
    );
    for (tool, args, from) in [
        (
            "kubectl",
            &["version", "--client"][..],
            "scripts/install-test-deps.sh",
        ),
        (
            "node",
            &["--version"][..],
            "scripts/install-test-deps.sh (Debian's nodejs)",
        ),
    ] {
        let found = Command::new(tool)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(found, "{tool} is not on PATH: run {from}");
    }
    let out = Command::new(&python)
        .arg(root.join("deploy/kubernetes/tests/validate.py"))
        .arg("--wick")
        .arg(env!("CARGO_BIN_EXE_wick"))
        .current_dir(&root)
        .output()
        .expect("run validate.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "validate.py failed ({:?}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Every check ran: both renders, each validator on its objects, the negative checks.
    for line in [
        "deploy/kubernetes: renders Deployment, PodDisruptionBudget, ScaledObject, Service, ServiceMonitor",
        "deploy/kubernetes/hpa: renders Deployment, HorizontalPodAutoscaler, PodDisruptionBudget, Service, ServiceMonitor",
        "deploy/kubernetes: ScaledObject/wick: its CRD's schema",
        "deploy/kubernetes: ServiceMonitor/wick: its CRD's schema",
        "wick serve --help lists",
        "deploy/kubernetes: all checks passed",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    assert_eq!(
        stdout.matches(": Kubernetes 1.30.0 and ").count(),
        5,
        "{stdout}"
    );
    assert_eq!(stdout.matches("ok   negative: ").count(), 8, "{stdout}");
}
