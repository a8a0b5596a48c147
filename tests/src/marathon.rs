//! Test helpers: marathon.
