//! Test helpers: netns.
