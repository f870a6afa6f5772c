//! HTTPS: `wick serve --ssl-certfile --ssl-keyfile` with a CA and a 127.0.0.1 certificate
//! made here (rcgen). The official `openai` Python client trusting the CA gets a chat
//! completion and a streamed one; plain HTTP to the port and a client without the CA
//! fail; SIGTERM drains over TLS exactly as over plain HTTP (the same test body as
//! lifecycle's). Bad flags and files stop start-up, naming the file.

use crate::support::Server;
use std::path::{Path, PathBuf};

/// A CA, and a server certificate for 127.0.0.1 and localhost signed by it, as PEM files.
struct Certs {
    dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn certs() -> Certs {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(DnType::CommonName, "wick test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    Certs {
        ca: write("ca.pem", ca.pem()),
        cert: write("cert.pem", leaf.pem()),
        key: write("key.pem", key.serialize_pem()),
        dir,
    }
}

fn tls_flags(c: &Certs) -> Vec<String> {
    let path = |p: &Path| p.to_str().unwrap().to_string();
    vec![
        "--ssl-certfile".into(),
        path(&c.cert),
        "--ssl-keyfile".into(),
        path(&c.key),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_openai_python_client_and_drains_on_sigterm() {
    let c = certs();
    let mut flags = vec!["--quantization", "none", "--drain-timeout", "300"];
    let tls = tls_flags(&c);
    flags.extend(tls.iter().map(String::as_str));
    let wick = Path::new(env!("CARGO_BIN_EXE_wick"));
    let model = wick_test_support::smollm2_gguf();
    let server = Server::launch(wick, &model, "smollm2", &flags, Some(&c.ca)).await;
    assert!(
        server.base.starts_with("https://127.0.0.1:"),
        "{}",
        server.base
    );
    let logs = server.logs.lock().unwrap().join("\n");
    assert!(
        logs.lines()
            .any(|l| l.contains("listening") && l.contains("scheme=https")),
        "{logs}"
    );

    let base = server.url("/v1");
    let args = [base.as_ref(), c.ca.as_os_str()];
    crate::python_client::run_script("tls_client.py", &args, "openai tls client checks passed")
        .await;

    crate::lifecycle::sigterm_drains_then_exits_0(server).await;
}

/// `wick serve ARGS` on a tiny model: it must fail; its stderr.
fn start_up_error(args: &[&str]) -> String {
    let golden = wick_test_support::tiny::TinyGolden::load();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wick"))
        .args(["serve", "--port", "0", "--model"])
        .arg(golden.model("llama3-tied").dir())
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn tls_flags_go_together_and_bad_files_stop_start_up_naming_them() {
    let c = certs();
    let (cert, key) = (c.cert.to_str().unwrap(), c.key.to_str().unwrap());
    let e = start_up_error(&["--ssl-certfile", cert]);
    assert!(e.contains("--ssl-keyfile"), "{e}");
    let e = start_up_error(&["--ssl-keyfile", key]);
    assert!(e.contains("--ssl-certfile"), "{e}");

    let missing = c.dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    let junk = c.dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let junk = junk.to_str().unwrap();
    let other = c.dir.path().join("other-key.pem");
    std::fs::write(&other, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let other = other.to_str().unwrap();
    for (cert, key, names) in [
        (missing, key, format!("--ssl-certfile {missing}")),
        (cert, missing, format!("--ssl-keyfile {missing}")),
        (junk, key, format!("--ssl-certfile {junk}")),
        (key, key, format!("--ssl-certfile {key}")),
        (cert, cert, format!("--ssl-keyfile {cert}")),
        (cert, other, format!("--ssl-keyfile {other}")),
    ] {
        let e = start_up_error(&["--ssl-certfile", cert, "--ssl-keyfile", key]);
        assert!(e.contains(&names), "{cert} {key}: {e}");
        assert!(!e.contains("listening"), "{e}");
    }
}
