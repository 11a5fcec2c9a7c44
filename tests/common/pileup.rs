//! Load for the spike tests: a steady light background, a lock pile-up behind one request that
//! holds a row lock (idle in transaction), and CPU loops.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::e2e::unix_now;
use super::TestPg;

/// A client of `pg` as superuser with `application_name`.
pub fn client(pg: &TestPg, application_name: &str) -> postgres::Client {
    postgres::Config::new()
        .host(pg.socket_dir().to_str().unwrap())
        .port(pg.port())
        .user("postgres")
        .dbname("postgres")
        .application_name(application_name)
        .connect(postgres::NoTls)
        .expect("test client")
}

/// A uuid-shaped id for request `n` of test `tag` (hex digits only).
pub fn request_id(tag: u32, n: u32) -> String {
    format!("{tag:08x}-0000-4000-8000-{n:012x}")
}

/// A background session running short queries until dropped.
pub struct Background {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// One session running `SELECT pg_sleep(0.05)` in a loop: about one active session.
    pub fn light(pg: &TestPg) -> Background {
        let mut c = client(pg, "steady-load");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let _ = c.batch_execute("SELECT pg_sleep(0.05)");
            }
        });
        Background {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a pile-up did, in unix seconds.
#[derive(Debug, Clone, Copy)]
pub struct PileUp {
    /// When all waiters were waiting.
    pub full_at: f64,
    /// When the holder committed.
    pub released_at: f64,
}

/// The holder's query, as the agent normalizes it.
pub const HOLDER_QUERY_NORMALIZED: &str = "UPDATE spike_t SET v = ? WHERE id = ?";

/// Creates the table the pile-up fights over.
pub fn setup(pg: &TestPg) {
    pg.admin()
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS spike_t (id int PRIMARY KEY, v int); \
             INSERT INTO spike_t VALUES (1, 0) ON CONFLICT DO NOTHING",
        )
        .unwrap();
}

/// `n` sessions (requests `request_id(tag, 1..=n)`) wait on the row lock the holder (request
/// `request_id(tag, 0)`, idle in transaction after its UPDATE) keeps for `hold` once all of them
/// wait; then the holder commits and every waiter finishes.
pub fn lock_pile_up(pg: &TestPg, tag: u32, n: u32, hold: Duration) -> PileUp {
    setup(pg);
    let mut holder = client(pg, &format!("bitville-{}", request_id(tag, 0)));
    holder.batch_execute("BEGIN").unwrap();
    holder
        .batch_execute("UPDATE spike_t SET v = 1 WHERE id = 1")
        .unwrap();
    let waiters: Vec<JoinHandle<()>> = (1..=n)
        .map(|i| {
            let mut c = client(pg, &format!("bitville-{}", request_id(tag, i)));
            std::thread::spawn(move || {
                c.batch_execute("UPDATE spike_t SET v = v + 1 WHERE id = 1")
                    .unwrap();
            })
        })
        .collect();
    let mut admin = pg.admin();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .get(0);
        if waiting >= i64::from(n) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {waiting} of {n} waiters wait"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let full_at = unix_now();
    std::thread::sleep(hold);
    let released_at = unix_now();
    holder.batch_execute("COMMIT").unwrap();
    for w in waiters {
        w.join().unwrap();
    }
    PileUp {
        full_at,
        released_at,
    }
}

/// `n` sessions each spinning on the CPU for `d` (a PL/pgSQL loop: no wait event).
pub fn cpu_loops(pg: &TestPg, n: u32, d: Duration) -> (f64, f64) {
    let clients: Vec<postgres::Client> = (0..n).map(|i| client(pg, &format!("cpu-{i}"))).collect();
    let start = unix_now();
    let sql = format!(
        "DO $$ DECLARE stop timestamptz := clock_timestamp() + interval '{} ms'; \
         BEGIN WHILE clock_timestamp() < stop LOOP END LOOP; END $$",
        d.as_millis()
    );
    let threads: Vec<JoinHandle<()>> = clients
        .into_iter()
        .map(|mut c| {
            let sql = sql.clone();
            std::thread::spawn(move || c.batch_execute(&sql).unwrap())
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    (start, unix_now())
}

/// `n` sessions in `SELECT pg_sleep(...)` (application_name `sleeper`) until dropped; the
/// drop cancels them and joins their threads.
pub struct Sleepers {
    pg_admin: postgres::Client,
    threads: Vec<JoinHandle<()>>,
}

/// Starts `n` sessions sleeping in `pg_sleep` and returns once all of them sleep (at most 30 s).
pub fn sleepers(pg: &TestPg, n: u32) -> Sleepers {
    let threads = (0..n)
        .map(|_| {
            let mut c = client(pg, "sleeper");
            std::thread::spawn(move || {
                // Cancelled at the end: the error is the normal way out.
                let _ = c.batch_execute("SELECT pg_sleep(600)");
            })
        })
        .collect();
    let mut admin = pg.admin();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sleeping: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sleeper' \
                 AND wait_event = 'PgSleep'",
                &[],
            )
            .unwrap()
            .get(0);
        if sleeping >= i64::from(n) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {sleeping} of {n} sessions sleep"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Sleepers {
        pg_admin: admin,
        threads,
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        let _ = self.pg_admin.batch_execute(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'sleeper'",
        );
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
