//! Padis benchmark harness: starts Padis and its peers, drives them with the same load, prints ratios.
