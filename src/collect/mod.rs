//! Collectors: each file turns one source (PostgreSQL views, `/proc`) into plain data for a
//! listener payload. Collectors never talk to the spool or the shipper; the daemon decides when
//! to call them and what to do with what they return.

pub mod host;
pub mod procfs;
