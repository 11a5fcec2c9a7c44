//! Connection pool (placeholder).
