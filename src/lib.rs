//! bitville-pg-agent: watches a PostgreSQL server and its host, spools what it sees to disk and
//! ships it to the Bitville listener. Modules are declared in the order data flows; see
//! ARCHITECTURE.md for the map and the invariants.

pub mod cli;
pub mod config;
pub mod health;
pub mod json;
pub mod payload;
pub mod pool;
