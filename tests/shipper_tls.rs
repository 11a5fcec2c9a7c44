//! HTTPS with a private CA: the shipper trusts an operator `ca_file` and delivers over TLS, and
//! without that CA (or with another one) the handshake fails: verification is never off.
//!
//! The TLS listener is `openssl s_server` (the openssl CLI comes with Debian's postgresql
//! package, which the tests need anyway): it prints what it receives and sends what we write
//! to its stdin, so the test answers `200` once the request arrived. Certificates are made per
//! run with `openssl req`/`openssl x509`: a CA, and a server certificate for 127.0.0.1 it signs.

mod common;
use common::TempDir;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use bitville_pg_agent::json::Json;
use bitville_pg_agent::payload::{AgentInfo, Payload, Source};
use bitville_pg_agent::ship::{ShipStatus, Shipper, ShipperOptions};
use bitville_pg_agent::spool::{Spool, SpoolOptions};

const LIVENESS: Duration = Duration::from_secs(60);

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI is needed for the TLS test (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA named `name` in `dir` (`<name>.pem`, `<name>.key`).
fn make_ca(dir: &Path, name: &str) {
    let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
}

/// A server certificate for 127.0.0.1 signed by the CA `ca` (`server.pem`, `server.key`).
fn make_server_cert(dir: &Path, ca: &str) {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
}

/// `openssl s_server` on a free port; the receiver gets every line it prints.
struct TlsServer {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    port: u16,
}

impl TlsServer {
    fn start(dir: &Path) -> TlsServer {
        let port = {
            let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        };
        let mut child = Command::new("openssl")
            .args(["s_server", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-cert", "server.pem", "-key", "server.key"])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start openssl s_server");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let server = TlsServer {
            child,
            stdin,
            lines,
            port,
        };
        assert!(
            server.wait_line(|l| l.contains("ACCEPT")).is_some(),
            "s_server is up"
        );
        server
    }

    /// The first line printed that satisfies `pred`, within the liveness bound.
    fn wait_line(&self, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + LIVENESS;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if pred(&line) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    fn answer_200(&mut self) {
        let body = "{\"success\":true,\"row_id\":1,\"source\":\"pg_log\"}";
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        self.stdin.write_all(answer.as_bytes()).unwrap();
        self.stdin.flush().unwrap();
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn temp_dir(name: &str) -> TempDir {
    TempDir::new(name)
}

fn spool_with_one(dir: &Path) -> Arc<Spool> {
    let mut o = SpoolOptions::new(dir.join("spool"));
    o.agent = AgentInfo {
        version: "t".into(),
        host: "h".into(),
    };
    let spool = Arc::new(Spool::open(o).unwrap());
    spool
        .append(&Payload {
            source: Source::PgLog,
            collected_at: 1_700_000_000.0,
            correlation_id: None,
            data: Json::object().field("line", "over tls"),
        })
        .unwrap();
    spool
}

fn options(port: u16, ca_file: Option<PathBuf>) -> ShipperOptions {
    let mut o = ShipperOptions::new(
        &format!("https://127.0.0.1:{port}/ingest/postgres"),
        "tls-key",
        "tls-test",
    );
    o.ca_file = ca_file;
    o.timeout = Duration::from_secs(10);
    o.breaker_failures = 1;
    o.breaker_reset = Duration::from_secs(3600);
    o.proxy_from_env = false;
    o
}

/// Runs a shipper until `pred` holds for its status; returns the last status.
fn ship_until(
    spool: &Arc<Spool>,
    opts: ShipperOptions,
    pred: impl Fn(&ShipStatus) -> bool,
    during: impl FnOnce(),
) -> ShipStatus {
    let mut shipper = Shipper::new(Arc::clone(spool), opts).expect("build shipper");
    let status = shipper.status_handle();
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = Arc::clone(&stop);
    let t = thread::spawn(move || shipper.run(&thread_stop));
    during();
    let deadline = Instant::now() + LIVENESS;
    while !pred(&status.get()) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    t.join().unwrap();
    status.get()
}

#[test]
fn a_private_ca_file_is_trusted_and_nothing_else_is() {
    let dir = temp_dir("ca");
    make_ca(&dir, "private-ca");
    make_ca(&dir, "other-ca");
    make_server_cert(&dir, "private-ca");
    let mut server = TlsServer::start(&dir);
    let port = server.port;

    // The system roots do not know the private CA: the handshake fails, nothing is acked.
    let ca_system = temp_dir("ca-system");
    let spool = spool_with_one(&ca_system);
    let s = ship_until(
        &spool,
        options(port, None),
        |s| s.stats.n_failures >= 1,
        || {},
    );
    assert_eq!((s.stats.n_sent, s.stats.n_failures), (0, 1));
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("tls ")),
        "{s:?}"
    );
    assert_eq!(spool.stats().n_pending, 1);

    // Another CA does not help either.
    let ca_other = temp_dir("ca-other");
    let spool = spool_with_one(&ca_other);
    let other = Some(dir.join("other-ca.pem"));
    let s = ship_until(
        &spool,
        options(port, other),
        |s| s.stats.n_failures >= 1,
        || {},
    );
    assert_eq!((s.stats.n_sent, s.stats.n_failures), (0, 1));
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("tls ")),
        "{s:?}"
    );

    // The operator's CA file: the request arrives over TLS and the 200 acknowledges it.
    let ca_private = temp_dir("ca-private");
    let spool = spool_with_one(&ca_private);
    let private = Some(dir.join("private-ca.pem"));
    let (tx, rx) = mpsc::channel();
    let s = ship_until(
        &spool,
        options(port, private),
        |s| s.stats.n_sent >= 1 || s.stats.n_failures >= 1,
        || {
            let post = server.wait_line(|l| l.starts_with("POST "));
            let auth = server.wait_line(|l| l.to_ascii_lowercase().starts_with("authorization:"));
            server.answer_200();
            tx.send((post, auth)).unwrap();
        },
    );
    let (post, auth) = rx.recv().unwrap();
    assert_eq!(post.as_deref(), Some("POST /ingest/postgres HTTP/1.1"));
    let auth = auth.expect("an authorization header");
    let (name, value) = auth.split_once(':').unwrap();
    assert!(name.eq_ignore_ascii_case("authorization"));
    assert_eq!(value.trim(), "Bearer tls-key", "case-sensitive Bearer");
    assert_eq!((s.stats.n_sent, s.stats.n_failures), (1, 0));
    assert_eq!(s.last_error, None);
    assert_eq!(spool.stats().n_pending, 0);
}
