//! Test helpers: l7.
