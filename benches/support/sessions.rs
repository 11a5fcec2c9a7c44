//! Sessions the benches hold open (`#[path]`-included by `agent_cost` and `sampler_profile`;
//! not a bench of its own): one thread per connection, each running the SQL it is sent and
//! answering when it returns, so the same connections can sleep, wait on a lock and be released
//! again.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::TestPg;

/// Connections held open by one thread each, all named `app` (`application_name`).
pub struct Holders {
    app: String,
    conninfo: String,
    workers: Vec<Sender<String>>,
    handles: Vec<JoinHandle<()>>,
    done_tx: Sender<()>,
    done_rx: Receiver<()>,
}

impl Holders {
    /// No session yet; [`Holders::grow_to`] opens them.
    pub fn new(pg: &TestPg, app: &str) -> Holders {
        let (done_tx, done_rx) = channel();
        Holders {
            app: app.to_string(),
            conninfo: format!(
                "host={} port={} user=postgres dbname=postgres application_name={app}",
                pg.socket_dir().display(),
                pg.port()
            ),
            workers: Vec::new(),
            handles: Vec::new(),
            done_tx,
            done_rx,
        }
    }

    /// Opens connections until `n` are held, 50 at a time in parallel.
    pub fn grow_to(&mut self, n: usize) {
        let t = Instant::now();
        while self.workers.len() < n {
            let batch = (n - self.workers.len()).min(50);
            let (ready_tx, ready_rx) = channel();
            for _ in 0..batch {
                let (tx, rx) = channel::<String>();
                let conninfo = self.conninfo.clone();
                let done = self.done_tx.clone();
                let ready = ready_tx.clone();
                let h = std::thread::Builder::new()
                    .stack_size(512 * 1024)
                    .spawn(move || {
                        let mut c = match postgres::Client::connect(&conninfo, postgres::NoTls) {
                            Ok(c) => c,
                            Err(e) => {
                                let _ = ready.send(Err(e.to_string()));
                                return;
                            }
                        };
                        let _ = ready.send(Ok(()));
                        while let Ok(sql) = rx.recv() {
                            // Cancelled or released: an error here is the normal end.
                            let _ = c.batch_execute(&sql);
                            let _ = done.send(());
                        }
                    })
                    .expect("spawn session thread");
                self.workers.push(tx);
                self.handles.push(h);
            }
            drop(ready_tx);
            // Each thread keeps its sender: count the answers rather than wait for a hang-up.
            for _ in 0..batch {
                match ready_rx.recv() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => panic!("opening session {}: {e}", self.workers.len()),
                    Err(_) => panic!("a session thread ended before connecting"),
                }
            }
        }
        println!(
            "  ({n} sessions held, opened in {:.1} s)",
            t.elapsed().as_secs_f64()
        );
    }

    /// Sends `sql` to every held session.
    pub fn run_all(&self, sql: &str) {
        for w in &self.workers {
            w.send(sql.to_string()).expect("session thread alive");
        }
    }

    /// Polls until `n` of the held sessions match `cond` (a pg_stat_activity predicate), for at
    /// most 60 s; whether they did.
    pub fn wait_sessions(&self, admin: &mut postgres::Client, n: usize, cond: &str) -> bool {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{}' AND {cond}",
            self.app
        );
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(60) {
            let got: i64 = admin.query_one(&sql, &[]).map(|r| r.get(0)).unwrap_or(0);
            if got as usize >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Cancels what every held session runs (a `pg_sleep`), through `admin`.
    pub fn cancel_all(&self, admin: &mut postgres::Client) {
        let _ = admin.batch_execute(&format!(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = '{}'",
            self.app
        ));
    }

    /// Waits until every session has answered (or 60 s passed).
    pub fn wait_all(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for _ in 0..self.workers.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.done_rx.recv_timeout(left).is_err() {
                println!("  (not every session returned within 60 s)");
                return;
            }
        }
    }

    /// Closes every connection and joins the threads.
    pub fn close(self) {
        drop(self.workers);
        for h in self.handles {
            let _ = h.join();
        }
    }
}
