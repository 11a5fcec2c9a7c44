//! What the server-health integration tests share: the collector run as the monitoring role
//! through the agent's own pool, the block as `serde_json::Value`, and waiting until the server's
//! statistics show a test's work (statistics reach the views asynchronously: when a session goes
//! idle or exits on PG15+, through the statistics collector before).

#![allow(dead_code)] // each test binary uses a different part

use std::time::{Duration, Instant};

use bitville_pg_agent::health::{Health, HealthOptions};
use bitville_pg_agent::pool::{Pool, PooledClient};
use serde_json::Value;

use crate::common::TestPg;

/// The collector and a pooled connection of the monitoring role (pg_monitor, read-only,
/// lock_timeout 100 ms).
pub struct Monitor {
    pub pool: Pool,
    pub health: Health,
}

impl Monitor {
    pub fn new(pg: &TestPg) -> Monitor {
        Monitor::with_options(pg, HealthOptions::default())
    }

    pub fn with_options(pg: &TestPg, options: HealthOptions) -> Monitor {
        Monitor {
            pool: Pool::new(&pg.db_config()),
            health: Health::new(options),
        }
    }

    fn client(&self) -> PooledClient {
        self.pool.acquire().expect("monitoring connection")
    }

    /// One collection interval, as the block's JSON.
    pub fn collect(&mut self) -> Value {
        let mut client = self.client();
        let block = self.health.collect(&mut client, Instant::now());
        let text = block.to_json_string();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("invalid JSON {e}: {text}"))
    }

    /// One collection that must have no errors.
    pub fn collect_clean(&mut self) -> Value {
        let block = self.collect();
        assert_eq!(block["errors"], serde_json::json!([]), "{block:#}");
        block
    }
}

/// Waits until `sql` (a query returning one boolean, run as superuser) is true. A readiness
/// wait for the statistics to arrive, not a timing assertion: it gives up only after a minute.
pub fn wait_until(pg: &TestPg, sql: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut admin = pg.admin();
        let ok: bool = admin
            .query_one(sql, &[])
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0);
        drop(admin);
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "statistics never showed: {sql}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `sql` in a fresh superuser session and closes it, so its statistics are flushed.
pub fn run_and_disconnect(pg: &TestPg, sql: &str) {
    let mut admin = pg.admin();
    admin
        .batch_execute(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The entry of `list` whose `key` is `value`.
pub fn find<'a>(list: &'a Value, key: &str, value: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|e| e[key] == value)
}

/// The `postgres` database's entry in the databases deltas.
pub fn postgres_db(block: &Value) -> &Value {
    find(&block["databases"]["databases"], "datname", "postgres")
        .unwrap_or_else(|| panic!("no postgres database entry: {block:#}"))
}

/// Asserts that no agent session was left inside a transaction (the collection runs in one
/// read-only transaction and must end it, also after errors).
pub fn assert_no_agent_transaction_open(pg: &TestPg) {
    let n: i64 = pg
        .admin()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE application_name = 'bitville-monitor' AND state <> 'idle'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "an agent session is not idle after a collection");
}
