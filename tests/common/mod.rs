//! The test harness every integration test shares: a throwaway PostgreSQL server.
//!
//! `TestPg::start()` copies a cached `initdb` template into a fresh temp directory, starts
//! `postgres` on a free port with its Unix socket in that directory and `pg_stat_statements`
//! preloaded, and creates the monitoring role `bitville_monitor` (member of `pg_monitor`,
//! `CONNECTION LIMIT 5`). When the test runs as root the server runs as the `postgres` OS user.
//! Dropping the `TestPg` (also while a failing test unwinds) stops the server and removes the
//! directory.
//!
//! `BITVILLE_TEST_PG_BIN` selects the directory holding `initdb` and `postgres` (another
//! PostgreSQL version); otherwise the newest `/usr/lib/postgresql/<v>/bin` is used.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bitville_pg_agent::config::{DatabaseConfig, Secret};

/// The monitoring role's password: spaces, quotes and `=` prove that no option can be injected.
pub const MONITOR_PASSWORD: &str = "it's a \"pass\" = word -c x=1";
/// The monitoring role.
pub const MONITOR_ROLE: &str = "bitville_monitor";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The directory holding the PostgreSQL server binaries used by the tests.
pub fn pg_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("BITVILLE_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect(
            "no /usr/lib/postgresql: install the postgresql package or set BITVILLE_TEST_PG_BIN",
        )
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
        .1
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The uid and gid of the `postgres` OS user.
pub fn postgres_ids() -> (u32, u32) {
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam returns null or a pointer to a static passwd entry we only read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "tests run as root need a 'postgres' OS user (install postgresql)"
    );
    // SAFETY: checked non-null above.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

/// A command that runs as the `postgres` OS user when the tests run as root.
pub fn command_as_server_user(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    if is_root() {
        use std::os::unix::process::CommandExt;
        let (uid, gid) = postgres_ids();
        cmd.uid(uid).gid(gid);
    }
    let bin = pg_bin_dir();
    if let Some(lib) = bin.parent().map(|p| p.join("lib")).filter(|l| l.exists()) {
        // The npm builds of other versions carry their shared libraries beside bin/.
        cmd.env("LD_LIBRARY_PATH", lib);
    }
    cmd
}

/// Hands `path` (recursively) to the server's OS user when running as root.
pub fn chown_to_server_user(path: &Path) {
    if is_root() {
        let (uid, gid) = postgres_ids();
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "chown {}", path.display());
    }
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An initdb'ed data directory made once per binary directory and reused by copying.
fn template(bin: &Path) -> PathBuf {
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = MAKING.lock().unwrap_or_else(|p| p.into_inner());
    let key: String = bin
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("pg-template{key}"));
    if cache.join("PG_VERSION").exists() {
        return cache;
    }
    let base = std::env::temp_dir().join(format!(
        "bitville-pg-initdb-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&base).unwrap();
    chown_to_server_user(&base);
    let data = base.join("data");
    run(
        command_as_server_user(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg("--locale=C"),
        "initdb",
    );
    std::fs::create_dir_all(cache.parent().unwrap()).unwrap();
    // Another test binary may have won the race; either copy is fine.
    let staged = cache.with_extension(format!(
        "tmp{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    run(
        Command::new("cp").arg("-a").arg(&data).arg(&staged),
        "cp template",
    );
    if std::fs::rename(&staged, &cache).is_err() {
        let _ = std::fs::remove_dir_all(&staged);
    }
    let _ = std::fs::remove_dir_all(&base);
    cache
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Options for a test server.
#[derive(Default, Clone)]
pub struct Builder {
    settings: Vec<(String, String)>,
    no_statements: bool,
}

impl Builder {
    /// Adds a `-c name=value` server setting.
    pub fn setting(mut self, name: &str, value: &str) -> Builder {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Starts without pg_stat_statements preloaded (nor the extension created).
    pub fn without_pg_stat_statements(mut self) -> Builder {
        self.no_statements = true;
        self
    }

    /// Starts the server.
    pub fn start(self) -> TestPg {
        let bin = pg_bin_dir();
        let template = template(&bin);
        let dir = std::env::temp_dir().join(format!(
            "bitville-pg-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        run(
            Command::new("cp")
                .arg("-a")
                .arg(&template)
                .arg(dir.join("data")),
            "cp data",
        );
        chown_to_server_user(&dir);
        let mut pg = TestPg {
            dir,
            bin,
            port: 0,
            child: None,
            builder: self,
        };
        pg.launch();
        pg.setup();
        pg
    }
}

/// A running throwaway PostgreSQL server.
pub struct TestPg {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
    builder: Builder,
}

impl TestPg {
    /// A server with the default settings.
    pub fn start() -> TestPg {
        Builder::default().start()
    }

    /// Options for a server.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Its TCP port (also names the Unix socket).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The temp directory of this server (tests may put their own files here).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file the server's stderr goes to.
    pub fn server_log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// The binary directory in use.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The `postgres` command for this server, its output appended to the server log.
    fn server_command(&self) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.server_log())
            .unwrap();
        chown_to_server_user(&self.server_log());
        let mut cmd = command_as_server_user(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.dir);
        let mut settings = vec![
            ("listen_addresses".to_string(), "127.0.0.1".to_string()),
            ("fsync".into(), "off".into()),
            ("max_connections".into(), "60".into()),
            ("logging_collector".into(), "off".into()),
        ];
        if !self.builder.no_statements {
            settings.push((
                "shared_preload_libraries".into(),
                "pg_stat_statements".into(),
            ));
            settings.push(("pg_stat_statements.track".into(), "all".into()));
        }
        settings.extend(self.builder.settings.iter().cloned());
        for (k, v) in &settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        cmd
    }

    fn launch(&mut self) {
        for attempt in 0..5 {
            self.port = free_port();
            self.child = Some(self.server_command().spawn().expect("spawn postgres"));
            if self.wait_ready() {
                return;
            }
            self.kill();
            eprintln!(
                "postgres did not start (attempt {attempt}): {}",
                std::fs::read_to_string(self.server_log()).unwrap_or_default()
            );
        }
        panic!(
            "postgres would not start; see {}",
            self.server_log().display()
        );
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return false;
                }
            }
            if self.try_admin().is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn try_admin(&self) -> Result<postgres::Client, postgres::Error> {
        postgres::Config::new()
            .host(self.dir.to_str().unwrap())
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .application_name("bitville-test-admin")
            .connect(postgres::NoTls)
    }

    fn setup(&self) {
        let mut admin = self.admin();
        let pw = MONITOR_PASSWORD.replace('\'', "''");
        admin
            .batch_execute(&format!(
                "CREATE ROLE {MONITOR_ROLE} LOGIN PASSWORD '{pw}' CONNECTION LIMIT 5 IN ROLE pg_monitor"
            ))
            .unwrap();
        if !self.builder.no_statements {
            admin
                .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .unwrap();
        }
    }

    /// A superuser connection over the Unix socket (not through the agent's pool).
    pub fn admin(&self) -> postgres::Client {
        self.try_admin().expect("admin connection")
    }

    /// The server's major version (e.g. 15).
    pub fn major_version(&self) -> u32 {
        let v: String = self
            .admin()
            .query_one("SHOW server_version_num", &[])
            .unwrap()
            .get(0);
        v.parse::<u32>().unwrap() / 10000
    }

    /// The agent's database settings for this server: the monitoring role over the Unix socket.
    pub fn db_config(&self) -> DatabaseConfig {
        DatabaseConfig {
            host: self.dir.to_str().unwrap().to_string(),
            port: self.port,
            dbname: "postgres".into(),
            user: MONITOR_ROLE.into(),
            password: Secret::new(""),
            statement_timeout: Duration::from_millis(5000),
            lock_timeout: Duration::from_millis(100),
            idle_in_transaction_timeout: Duration::from_millis(10_000),
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(30),
            pool_max_size: 5,
        }
    }

    /// Like [`TestPg::db_config`] but over TCP with the role's password.
    pub fn tcp_db_config(&self) -> DatabaseConfig {
        DatabaseConfig {
            host: "127.0.0.1".into(),
            password: Secret::new(MONITOR_PASSWORD),
            ..self.db_config()
        }
    }

    /// An INI file for the agent that points at this server (the caller adds what it needs).
    pub fn agent_ini(&self, extra: &str) -> String {
        format!(
            "[database]\nhost = {}\nport = {}\nuser = {MONITOR_ROLE}\nname = postgres\n{extra}",
            self.dir.display(),
            self.port
        )
    }

    /// Stops the server (fast shutdown) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill with a pid we spawned and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops and starts the server again on the same port and data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Starts a stopped server again on the same port and data directory.
    pub fn start_again(&mut self) {
        self.child = Some(self.server_command().spawn().expect("spawn postgres"));
        assert!(
            self.wait_ready(),
            "postgres did not come back; see {}",
            self.server_log().display()
        );
    }

    /// Sessions of the agent (application_name `bitville-monitor`) on the server now.
    pub fn agent_sessions(&self, admin: &mut postgres::Client) -> i64 {
        admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'bitville-monitor'",
                &[],
            )
            .unwrap()
            .get(0)
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The unit tests' scratch directory guard, shared: a fresh directory under the system temp
/// dir, removed on drop.
#[path = "../../src/testdir.rs"]
mod testdir;
pub use testdir::TempDir;

pub mod agent;
pub mod e2e;
pub mod kill;
pub mod listener;
pub mod logs;
pub mod pileup;
pub mod spool;
