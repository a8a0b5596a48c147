//! Test helpers: l4.
