//! Helpers for the Padis end-to-end tests: spawning padis, network namespaces, certificates, test doubles.
