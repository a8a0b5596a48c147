//! Test helpers: process.
