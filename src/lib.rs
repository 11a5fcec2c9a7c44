//! bitville-pg-agent: watches a PostgreSQL server and its host, spools what it sees to disk and
//! ships it to the Bitville listener. ARCHITECTURE.md maps the modules in the order data flows
//! through them, with the invariants.

// `unsafe` lives in `sys` only (every libc call behind a safe function); the compiler holds it so.
#![deny(unsafe_code)]

pub mod agent_report;
pub mod calendar;
pub mod cli;
pub mod collect;
pub mod config;
pub mod connect_block;
pub mod daemon;
pub mod fsutil;
pub mod health;
pub mod json;
pub mod logging;
pub mod logtail;
pub mod normalize;
pub mod oneshot;
pub mod payload;
pub mod pgerror;
pub mod pool;
pub mod schedule;
pub mod selfstats;
pub mod selftest;
pub mod ship;
pub mod shutdown;
pub mod signals;
pub mod spike;
pub mod spool;
pub mod status;
#[allow(unsafe_code)]
pub mod sys;
#[cfg(test)]
pub(crate) mod testdir;
#[cfg(test)]
mod testdir_tests;
pub mod wiring;
