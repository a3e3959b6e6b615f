//! The cases, one module per topic. Every case is `pub async fn case(store, capabilities)`, gets a fresh,
//! empty store, and panics (an assertion) when the backend breaks the semantics documented in
//! [`herald_core`].

pub mod append;
pub mod concurrency;
pub mod delete;
pub mod expected_version;
pub mod follow_and_watch;
pub mod ids_and_duplicates;
pub mod limits_and_bad_input;
pub mod links;
pub mod lookup;
pub mod payload_fidelity;
pub mod read_options_combined;
pub mod reads_all;
pub mod reads_category;
pub mod reads_stream;
pub mod streams_listing;
pub mod time_filters;
