//! Who blocks whom: the lock wait tree, shipped inside the `pg_stat_activity` payload (the
//! listener has no lock source).
//!
//! Invariants: `pg_blocking_pids()` is called only for sessions that wait on a heavyweight lock
//! (`wait_event_type = 'Lock'`), because it takes the lock manager's partition locks; the activity
//! sampler runs [`query_waiters`] only when its own sample saw such a session. Tree building is
//! pure ([`build_trees`]), tolerates cycles (a deadlock before the detector fires) and sessions
//! blocked by several others, and never panics.

use std::collections::HashMap;

use super::{col, CollectError};
use crate::json::Json;

/// One session waiting on a lock, as the server reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct LockWaiter {
    /// The waiting backend.
    pub pid: i32,
    /// `pg_blocking_pids(pid)`: sessions holding or queued ahead for a conflicting lock; 0 stands
    /// for a prepared transaction.
    pub blockers: Vec<i32>,
    /// `pg_locks.locktype` of the lock waited for (`relation`, `transactionid`, `tuple`, ...).
    pub locktype: Option<String>,
    /// The mode requested (`AccessExclusiveLock`, ...).
    pub mode: Option<String>,
    /// The relation as `schema.table` once [`RelationNames::resolve`] ran (the OID as text when
    /// it is in another database than the connected one, which cannot be resolved from here).
    pub relation: Option<String>,
    /// `pg_locks.relation`.
    pub relation_oid: Option<u32>,
    /// Whether the lock is in the connected database (so its OID resolves here).
    pub same_database: bool,
    /// How long it has waited (`pg_locks.waitstart`, PostgreSQL 14 and later).
    pub wait_ms: Option<f64>,
}

const COLLECTOR: &str = "locks";

/// `pg_locks.waitstart` exists from PostgreSQL 14.
const WAITSTART_SINCE: u32 = 140000;

/// Reads every session waiting on a lock with its blockers and the lock it wants.
pub fn query_waiters(
    client: &mut postgres::Client,
    server_version_num: u32,
) -> Result<Vec<LockWaiter>, CollectError> {
    let wait_ms = if server_version_num >= WAITSTART_SINCE {
        "(EXTRACT(EPOCH FROM (now() - l.waitstart)) * 1000)::float8"
    } else {
        "NULL::float8"
    };
    // A backend waits for one lock at a time, so the join adds at most one row per waiter;
    // DISTINCT ON guards against the rare duplicate anyway.
    // The relation's name is resolved afterwards, once per OID (RelationNames), instead of a
    // catalog lookup per waiter and snapshot.
    let sql = format!(
        "SELECT DISTINCT ON (w.pid) w.pid, pg_blocking_pids(w.pid), l.locktype, l.mode, \
         l.relation, {wait_ms}, \
         l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         FROM pg_stat_activity w LEFT JOIN pg_locks l ON l.pid = w.pid AND NOT l.granted \
         WHERE w.wait_event_type = 'Lock' AND w.pid <> pg_backend_pid() ORDER BY w.pid"
    );
    let rows = client
        .query_typed(&sql, &[])
        .map_err(CollectError::query(COLLECTOR, "lock_waiters"))?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some(LockWaiter {
                pid: col(r, 0)?,
                blockers: col::<Vec<i32>>(r, 1).unwrap_or_default(),
                locktype: col(r, 2),
                mode: col(r, 3),
                relation_oid: col::<u32>(r, 4),
                relation: col::<u32>(r, 4).map(|o| o.to_string()),
                wait_ms: col(r, 5),
                same_database: col::<bool>(r, 6).unwrap_or(false),
            })
        })
        .collect())
}

/// Most relation names kept; the cache starts over when full.
const MAX_RELATION_NAMES: usize = 4096;

/// Relation OIDs resolved to `schema.table`, once each, cached for the sampler's life.
#[derive(Debug, Default)]
pub struct RelationNames {
    names: HashMap<u32, String>,
}

impl RelationNames {
    /// Names every waiter's relation in the connected database: unknown OIDs are looked up in
    /// one catalog query on `client` (the session's `lock_timeout` bounds it: it never waits
    /// behind a lock for long), known ones come from the cache. A relation dropped meanwhile
    /// keeps its OID.
    pub fn resolve(
        &mut self,
        client: &mut postgres::Client,
        waiters: &mut [LockWaiter],
    ) -> Result<(), CollectError> {
        let mut unknown: Vec<u32> = waiters
            .iter()
            .filter(|w| w.same_database)
            .filter_map(|w| w.relation_oid)
            .filter(|o| !self.names.contains_key(o))
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        if !unknown.is_empty() {
            if self.names.len() + unknown.len() > MAX_RELATION_NAMES {
                self.names.clear();
            }
            let rows = client
                .query(
                    "SELECT c.oid, n.nspname, c.relname FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = ANY($1)",
                    &[&unknown],
                )
                .map_err(CollectError::query(COLLECTOR, "relation_names"))?;
            for r in &rows {
                if let (Some(oid), Some(ns), Some(rel)) =
                    (col::<u32>(r, 0), col::<&str>(r, 1), col::<&str>(r, 2))
                {
                    self.names.insert(oid, format!("{ns}.{rel}"));
                }
            }
        }
        for w in waiters.iter_mut().filter(|w| w.same_database) {
            if let Some(name) = w.relation_oid.and_then(|o| self.names.get(&o)) {
                w.relation = Some(name.clone());
            }
        }
        Ok(())
    }
}

/// One session's place in a wait tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeNode {
    /// The backend (0 for a prepared transaction).
    pub pid: i32,
    /// The blocker it is drawn under (`None` for the root).
    pub parent: Option<i32>,
    /// 0 for the root, 1 for those it blocks directly, and so on.
    pub depth: u32,
}

/// A root blocker and every session waiting behind it, directly or through others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockTree {
    /// The root: blocks others and waits for nobody (or the lowest pid of a wait cycle).
    pub root: i32,
    /// Root first, then the waiters in breadth-first order.
    pub nodes: Vec<TreeNode>,
    /// The longest chain: 1 when the root blocks sessions directly, 2 for A→B→C, ...
    pub depth: u32,
    /// Whether the waits form a cycle (a deadlock the server has not resolved yet).
    pub cycle: bool,
}

impl LockTree {
    /// Sessions waiting in this tree (everyone except the root).
    pub fn n_blocked(&self) -> usize {
        self.nodes.len().saturating_sub(1)
    }
}

/// Builds the wait trees from the waiters. A waiter blocked by several sessions is drawn under
/// the blocker that itself waits (the longer chain: C behind B behind A rather than C beside B),
/// the first reported otherwise. Trees are ordered by size, largest first.
pub fn build_trees(waiters: &[LockWaiter]) -> Vec<LockTree> {
    let waiting: HashMap<i32, &LockWaiter> = waiters.iter().map(|w| (w.pid, w)).collect();
    let parent_of = |w: &LockWaiter| -> Option<i32> {
        w.blockers
            .iter()
            .copied()
            .find(|b| *b != w.pid && waiting.contains_key(b))
            .or_else(|| w.blockers.iter().copied().find(|b| *b != w.pid))
    };
    let mut parent: HashMap<i32, i32> = HashMap::new();
    for w in waiters {
        if let Some(p) = parent_of(w) {
            parent.insert(w.pid, p);
        }
    }
    // Find each waiter's root by walking up; a walk that comes back to a visited pid is a cycle.
    let mut root_of: HashMap<i32, (i32, bool)> = HashMap::new();
    for w in waiters {
        if !parent.contains_key(&w.pid) {
            continue;
        }
        let mut path = vec![w.pid];
        let mut cur = w.pid;
        let (root, cycle) = loop {
            match parent.get(&cur) {
                None => break (cur, false),
                Some(&p) => {
                    if let Some(pos) = path.iter().position(|&x| x == p) {
                        let lowest = path[pos..].iter().copied().min().unwrap_or(p);
                        break (lowest, true);
                    }
                    path.push(p);
                    cur = p;
                }
            }
        };
        root_of.insert(w.pid, (root, cycle));
    }
    let mut roots: Vec<(i32, bool)> = root_of.values().copied().collect();
    roots.sort_unstable();
    roots.dedup_by_key(|r| r.0);
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (&child, &p) in &parent {
        children.entry(p).or_default().push(child);
    }
    for c in children.values_mut() {
        c.sort_unstable();
    }
    let mut trees: Vec<LockTree> = roots
        .into_iter()
        .map(|(root, cycle)| {
            let mut nodes = vec![TreeNode {
                pid: root,
                parent: None,
                depth: 0,
            }];
            let mut i = 0;
            while i < nodes.len() {
                let (pid, depth) = (nodes[i].pid, nodes[i].depth);
                for &c in children.get(&pid).map(Vec::as_slice).unwrap_or(&[]) {
                    // In a cycle the walk returns to the root; stop there.
                    if c != root && !nodes.iter().any(|n| n.pid == c) {
                        nodes.push(TreeNode {
                            pid: c,
                            parent: Some(pid),
                            depth: depth + 1,
                        });
                    }
                }
                i += 1;
            }
            let depth = nodes.iter().map(|n| n.depth).max().unwrap_or(0);
            LockTree {
                root,
                nodes,
                depth,
                cycle,
            }
        })
        .collect();
    trees.sort_by(|a, b| b.nodes.len().cmp(&a.nodes.len()).then(a.root.cmp(&b.root)));
    trees
}

/// The trees as payload JSON. `session` describes a pid (state, query, transaction age,
/// correlation ID, ...) from the sampler's latest rows; `None` adds only the pid.
pub fn trees_json(
    trees: &[LockTree],
    waiters: &[LockWaiter],
    mut session: impl FnMut(i32) -> Option<Json>,
) -> Json {
    let by_pid: HashMap<i32, &LockWaiter> = waiters.iter().map(|w| (w.pid, w)).collect();
    Json::Array(
        trees
            .iter()
            .map(|t| {
                let nodes = t
                    .nodes
                    .iter()
                    .map(|n| {
                        let mut o = session(n.pid).unwrap_or_else(Json::object);
                        if n.pid == 0 {
                            o.push("prepared_transaction", true);
                        }
                        let mut node = Json::object()
                            .field("pid", n.pid)
                            .field("depth", n.depth)
                            .field("blocked_by", n.parent);
                        if let Some(w) = by_pid.get(&n.pid) {
                            node.push(
                                "blockers",
                                Json::Array(w.blockers.iter().map(|&b| b.into()).collect()),
                            );
                            node.push(
                                "lock",
                                Json::object()
                                    .field("locktype", w.locktype.as_deref())
                                    .field("mode", w.mode.as_deref())
                                    .field("relation", w.relation.as_deref()),
                            );
                            node.push("wait_ms", w.wait_ms);
                        }
                        if let Json::Object(fields) = o {
                            for (k, v) in fields {
                                node.push(k, v);
                            }
                        }
                        node
                    })
                    .collect();
                Json::object()
                    .field("root_pid", t.root)
                    .field("depth", t.depth)
                    .field("n_blocked", t.n_blocked())
                    .field("cycle", t.cycle)
                    .field("sessions", Json::Array(nodes))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(pid: i32, blockers: &[i32]) -> LockWaiter {
        LockWaiter {
            pid,
            blockers: blockers.to_vec(),
            locktype: Some("relation".into()),
            mode: Some("AccessExclusiveLock".into()),
            relation: Some("public.t".into()),
            relation_oid: Some(16384),
            same_database: true,
            wait_ms: Some(5.0),
        }
    }

    #[test]
    fn chain_is_one_tree_rooted_at_the_first_blocker() {
        // C is reported as blocked by both A (holder) and B (queued ahead): drawn under B.
        let trees = build_trees(&[w(20, &[10]), w(30, &[10, 20])]);
        assert_eq!(trees.len(), 1);
        let t = &trees[0];
        assert_eq!(t.root, 10);
        assert_eq!(t.depth, 2);
        assert_eq!(t.n_blocked(), 2);
        assert!(!t.cycle);
        assert_eq!(
            t.nodes,
            vec![
                TreeNode {
                    pid: 10,
                    parent: None,
                    depth: 0
                },
                TreeNode {
                    pid: 20,
                    parent: Some(10),
                    depth: 1
                },
                TreeNode {
                    pid: 30,
                    parent: Some(20),
                    depth: 2
                },
            ]
        );
    }

    #[test]
    fn separate_blockers_make_separate_trees_largest_first() {
        let trees = build_trees(&[w(2, &[1]), w(5, &[4]), w(6, &[4])]);
        assert_eq!(trees.iter().map(|t| t.root).collect::<Vec<_>>(), vec![4, 1]);
        assert_eq!(trees[0].n_blocked(), 2);
        assert_eq!(trees[0].depth, 1);
    }

    #[test]
    fn cycles_terminate_and_are_flagged() {
        let trees = build_trees(&[w(7, &[8]), w(8, &[7]), w(9, &[8])]);
        assert_eq!(trees.len(), 1);
        assert!(trees[0].cycle);
        assert_eq!(trees[0].root, 7);
        assert_eq!(trees[0].nodes.len(), 3);
    }

    #[test]
    fn waiter_without_blockers_and_prepared_transactions() {
        assert!(build_trees(&[w(3, &[])]).is_empty());
        let trees = build_trees(&[w(3, &[0])]);
        assert_eq!(trees[0].root, 0);
        let json = trees_json(&trees, &[w(3, &[0])], |_| None).to_json_string();
        assert!(json.contains(r#""prepared_transaction":true"#), "{json}");
        assert!(json.contains(r#""mode":"AccessExclusiveLock""#), "{json}");
    }

    #[test]
    fn json_merges_session_details() {
        let trees = build_trees(&[w(20, &[10])]);
        let json = trees_json(&trees, &[w(20, &[10])], |pid| {
            Some(Json::object().field(
                "state",
                if pid == 10 {
                    "idle in transaction"
                } else {
                    "active"
                },
            ))
        })
        .to_json_string();
        assert!(
            json.starts_with(r#"[{"root_pid":10,"depth":1,"n_blocked":1"#),
            "{json}"
        );
        assert!(
            json.contains(r#""pid":10,"depth":0,"blocked_by":null,"state":"idle in transaction""#),
            "{json}"
        );
        assert!(
            json.contains(r#""pid":20,"depth":1,"blocked_by":10"#),
            "{json}"
        );
    }
}
