//! HAProxy for the end-to-end tests: deploy/haproxy/haproxy.cfg.j2 rendered by the
//! playbook deploy/ansible/haproxy.yml (render and validate only), and HAProxy started on
//! it in the foreground, read through its admin socket and its log lines.

use serde_json::json;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const HAPROXY: &str = "/usr/sbin/haproxy";

/// HAProxy in master-worker mode in the foreground, its log lines kept.
pub struct HaProxy {
    child: Child,
    pub logs: Arc<Mutex<Vec<String>>>,
    socket: PathBuf,
}

impl HaProxy {
    pub fn start(config: &Path, socket: &Path) -> HaProxy {
        let mut child = Command::new(HAPROXY)
            .args(["-W", "-db", "-f"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start haproxy");
        let logs = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sink = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        HaProxy {
            child,
            logs,
            socket: socket.to_path_buf(),
        }
    }

    /// The answer of an admin-socket command, or `None` while the socket is not there.
    pub fn command(&self, cmd: &str) -> Option<String> {
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket).ok()?;
        s.write_all(format!("{cmd}\n").as_bytes()).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    }

    /// `show stat` of the backend `wick`: one map (column -> value) per row, by svname
    /// (the servers, and BACKEND).
    pub fn stat(&self) -> HashMap<String, HashMap<String, String>> {
        let Some(csv) = self.command("show stat") else {
            return HashMap::new();
        };
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        lines
            .filter(|l| l.starts_with("wick,"))
            .map(|l| {
                let row: HashMap<String, String> = (header.iter())
                    .zip(l.split(','))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                (row["svname"].clone(), row)
            })
            .collect()
    }

    /// Waits (bounded) until HAProxy has `server` in `status` (UP, DOWN, MAINT...).
    pub async fn wait_status(&self, server: &str, status: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let stat = self.stat();
            if stat.get(server).is_some_and(|r| r["status"] == status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "HAProxy never had {server} {status}: {:?}\n{}",
                stat.get(server).map(|r| &r["status"]),
                self.logs.lock().unwrap().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Completions HAProxy has logged (a request is logged when it ends).
    pub fn completions_done(&self) -> usize {
        let logs = self.logs.lock().unwrap();
        logs.iter()
            .filter(|l| l.contains("POST /v1/completions"))
            .count()
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        // The master stops its worker on SIGTERM.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Renders deploy/haproxy/haproxy.cfg.j2 through deploy/ansible/haproxy.yml (render and
/// validate only) for `servers`; the config file.
pub fn render(
    dir: &Path,
    bind: u16,
    stats: u16,
    servers: &[(&str, u16)],
    extra: &[(&str, &str)],
) -> PathBuf {
    let root = wick_test_support::repo_root();
    let ansible_bin = std::env::var("WICK_ANSIBLE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join(".cache/ansible-venv/bin"));
    let playbook = ansible_bin.join("ansible-playbook");
    assert!(
        playbook.is_file(),
        "{} is missing: run scripts/ansible-venv.sh (or set WICK_ANSIBLE_BIN)",
        playbook.display()
    );
    let config = dir.join("haproxy.cfg");
    let mut vars = json!({
        "haproxy_service_manager": "none",
        "haproxy_config": config,
        "haproxy_admin_socket": dir.join("admin.sock"),
        "haproxy_server_state_file": dir.join("server-state"),
        "haproxy_bind": format!("127.0.0.1:{bind}"),
        "haproxy_stats_bind": format!("127.0.0.1:{stats}"),
        "haproxy_check_interval": "500ms",
        "haproxy_check_fastinterval": "250ms",
        "haproxy_servers": servers.iter().map(|(name, port)| {
            json!({"name": name, "address": "127.0.0.1", "port": port})
        }).collect::<Vec<_>>(),
    });
    for (k, v) in extra {
        vars[*k] = json!(v);
    }
    std::fs::write(dir.join("vars.json"), vars.to_string()).unwrap();
    std::fs::write(
        dir.join("inventory.ini"),
        "[wick_lb]\nlb ansible_connection=local ansible_python_interpreter=/usr/bin/python3\n",
    )
    .unwrap();
    let out = Command::new(&playbook)
        .arg("-i")
        .arg(dir.join("inventory.ini"))
        .arg("-e")
        .arg(format!("@{}", dir.join("vars.json").display()))
        .arg(root.join("deploy/ansible/haproxy.yml"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_LOCAL_TEMP", dir.join("ansible-local"))
        .env("ANSIBLE_HOME", dir.join("ansible-home"))
        .env("ANSIBLE_CONFIG", dir.join("ansible.cfg"))
        .output()
        .expect("run ansible-playbook");
    assert!(
        out.status.success() && config.is_file(),
        "ansible-playbook deploy/ansible/haproxy.yml failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    config
}
