//! Bench only: see `benches/peers.rs`.
