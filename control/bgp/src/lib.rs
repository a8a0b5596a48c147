//! Padis route announcement: an announce-only BGP speaker for healthy VIPs, and kernel host routes for OSPF sites
