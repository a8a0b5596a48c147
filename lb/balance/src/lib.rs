//! Padis backend selection: balancing algorithms behind one trait, the Maglev table (shared by L7 and L4), active and passive health state kept across snapshots
