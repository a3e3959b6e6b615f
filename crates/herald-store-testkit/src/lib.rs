//! The conformance suites every Herald backend runs: one for the event store port ([`EventStore`], below)
//! and one for the job queue port ([`herald_core::jobs::JobQueue`], in [`jobs`], with its wiring and the
//! decisions it pins). Beside them, the model-based test of the store port ([`model`], [`model_tests!`]):
//! random sequences of writes and reads checked against a reference model.
//!
//! [`herald_core`] documents the semantics of [`EventStore`] ("Semantics every backend implements"); this
//! crate checks them. Each check is a `pub async fn` in [`cases`], grouped by topic (`cases::append`,
//! `cases::links`, ...), taking a fresh, empty store as `Arc<dyn EventStore>` and the backend's
//! [`Capabilities`]. The [`conformance_tests!`] macro expands to one test per case for a given store factory,
//! so every case shows by name (`<module>::<case>`) in the test output and can be run alone with a filter.
//!
//! # Wiring a backend
//!
//! In the backend crate, add `herald-store-testkit` as a dev-dependency and create
//! `tests/conformance.rs`:
//!
//! ```ignore
//! // The factory: any `fn` or closure returning a future of a fresh, empty store, or of a `Fixture`
//! // when the store needs something kept alive (a temporary directory) or declares capabilities.
//! herald_store_testkit::conformance_tests!(|| async { herald_memory::InMemoryStore::new() });
//! ```
//!
//! A backend that needs a guard kept alive for the whole case, or whose capabilities differ from the
//! defaults:
//!
//! ```ignore
//! use herald_store_testkit::{Capabilities, Fixture};
//!
//! async fn fresh_store() -> Fixture {
//!     let dir = tempfile::tempdir().unwrap();
//!     let path = dir.path().join("test.db");
//!     let store = herald_sqlite::SqliteStore::open(path, Default::default()).await.unwrap();
//!     Fixture::new(store)
//!         .with_guard(dir) // dropped after the store, when the case ends
//!         .with_capabilities(Capabilities::default())
//! }
//!
//! herald_store_testkit::conformance_tests!(fresh_store);
//! ```
//!
//! Each generated test builds its own multi-threaded Tokio runtime with two worker threads (what
//! `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` builds, without requiring the backend
//! crate to depend on Tokio's macros), calls the factory once, runs the case under a 120-second timeout,
//! and fails with the case's panic message. The macro must be invoked once per test file, at module level.
//!
//! # Capabilities
//!
//! A case skips only when the backend *declares* it cannot do what the case needs, and says so on stderr
//! (`SKIPPED <case>: <why>`). Everything else is mandatory.
//!
//! | capability | default | cases that depend on it |
//! | --- | --- | --- |
//! | [`Capabilities::limits`] | [`Limits::default`] (8 MiB events) | `limits_and_bad_input` size checks use these limits |
//! | [`Capabilities::large_payloads`] | `true` | payloads over 1 MB (the 1 MB round trip; limit-sized events when the limit is over 1 MB) |
//!
//! # Decisions the suite pins
//!
//! Where the semantics in [`herald_core`] leave room, the suite settles it (change both together):
//!
//! - One append is one commit: its events share one `recorded_at`, and `recorded_at` never decreases along
//!   the global log. A link entry carries the linked event's own `recorded_at`; time filters on a stream read
//!   apply to it.
//! - `event(unknown id)` is `Ok(None)`, and so is `event(nil)` (no event can have it: append and link reject
//!   it as invalid input).
//! - `streams(prefix, after, 0)` is invalid input, like a read limit of 0. Listing order is byte order
//!   (SQL backends need a binary collation), and prefixes match literally (`%`, `_` are not wildcards).
//! - An idempotent retry is recognised by ids alone (same ids, same order, at consecutive versions of the
//!   same stream, appended there), whatever the expected version. A superset, a reordering, another stream,
//!   or an append after the stream was deleted is a duplicate. Retrying only a part of an earlier append is
//!   not tested (unspecified).
//! - When several ids clash, which one a `DuplicateEvent` names is the backend's choice among them; when an
//!   append is both a duplicate and a version conflict, which error wins is not tested.
//! - Deleting a missing stream is a no-op with `Any`/`NoStream` and a conflict (actual: no stream) with
//!   `StreamExists`/`Exact`. After a delete, the stream's old events can be linked back into it (it no
//!   longer holds them), with their origin still naming it.
//! - Global and category reads: forward from position 0 starts at 1; backward from 0 is empty.
//! - Data and metadata are kept byte for byte, including whitespace around the JSON value and duplicate
//!   keys.
//! - The head's position is the last committed global position; appends, links and deletes each grow its
//!   commit count; rejected writes and idempotent retries leave the position alone.
//!
//! # Writing cases
//!
//! Cases assert behaviour, never timing: to order two commits in time they wait until the clock passes the
//! first's `recorded_at` ([`support::wait_until_after`]); to see a live event they wait on
//! [`EventStore::watch_head`] or [`herald_core::EventStoreExt::follow`], never on a sleep. Errors are asserted by variant and by
//! what the message names ([`support`]). A rejected write is checked to leave the store unchanged by
//! comparing [`support::snapshot`]s. When you add a case, list it in [`conformance_tests!`] too: a unit test
//! of this crate fails when a case is missing from the macro.
//!

use std::any::Any;
use std::future::Future;
use std::time::Duration;

use herald_core::{EventStore, Limits};

pub mod cases;
pub mod jobs;
pub mod model;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod proxy;
pub mod support;

pub use support::Store;

/// What a backend declares about itself. Cases skip only on a declared capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The limits the store under test enforces (the factory built it with them).
    pub limits: Limits,
    /// Whether the backend stores payloads over 1 MB (and events of the full [`Limits::max_event_bytes`] when
    /// that is over 1 MB). Smaller limits are always tested at the limit.
    pub large_payloads: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            limits: Limits::default(),
            large_payloads: true,
        }
    }
}

impl Capabilities {
    /// The store under test enforces `limits` instead of the default ones.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Declares whether the backend can store large payloads (see [`Capabilities::large_payloads`]).
    pub fn with_large_payloads(mut self, supported: bool) -> Self {
        self.large_payloads = supported;
        self
    }
}

/// A store under test, its capabilities, and anything that must outlive it (a temporary directory).
pub struct Fixture {
    store: Store,
    capabilities: Capabilities,
    guard: Option<Box<dyn Any + Send>>,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

impl Fixture {
    /// A fixture for `store`, with default capabilities.
    pub fn new(store: impl EventStore) -> Self {
        Fixture {
            store: std::sync::Arc::new(store),
            capabilities: Capabilities::default(),
            guard: None,
        }
    }

    /// Keeps `guard` alive until the case has finished and the store is dropped.
    pub fn with_guard(mut self, guard: impl Any + Send) -> Self {
        self.guard = Some(Box::new(guard));
        self
    }

    /// Declares the store's capabilities.
    pub fn with_capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = capabilities;
        self
    }
}

/// What a factory may return: a store, or a [`Fixture`].
pub trait IntoFixture {
    /// Wraps `self` as a fixture.
    fn into_fixture(self) -> Fixture;
}

impl IntoFixture for Fixture {
    fn into_fixture(self) -> Fixture {
        self
    }
}

impl<S: EventStore> IntoFixture for S {
    fn into_fixture(self) -> Fixture {
        Fixture::new(self)
    }
}

/// How long one case may run before it fails as hung.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs one case on a fresh runtime and a fresh store: what each test generated by [`conformance_tests!`]
/// calls. Public so a backend can run a single case by hand.
pub fn run_case<F, Fut, T, C, CFut>(name: &str, factory: F, case: C)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
    T: IntoFixture,
    C: FnOnce(Store, Capabilities) -> CFut,
    CFut: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building a Tokio runtime");
    runtime.block_on(async {
        let Fixture {
            store,
            capabilities,
            guard,
        } = factory().await.into_fixture();
        let outcome = tokio::time::timeout(CASE_TIMEOUT, case(store, capabilities)).await;
        drop(guard);
        if outcome.is_err() {
            panic!("conformance case {name} did not finish within {CASE_TIMEOUT:?}");
        }
    });
}

/// Expands to one test per conformance case, for a store `factory`: an `fn` or closure taking nothing and
/// returning a future of a fresh, empty store (any [`EventStore`]) or of a [`Fixture`].
///
/// Tests are generated in one module per topic, named like the case functions in [`cases`], e.g.
/// `append::first_append_gets_version_0_and_position_1`. Invoke once per test file, at module level.
///
/// ```ignore
/// herald_store_testkit::conformance_tests!(|| async { herald_memory::InMemoryStore::new() });
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr $(,)?) => {
        async fn __herald_conformance_fixture() -> $crate::Fixture {
            $crate::IntoFixture::into_fixture(($factory)().await)
        }
        $crate::__conformance_cases!(__herald_conformance_fixture);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_module {
    ($fixture:ident, $module:ident : [$($case:ident),* $(,)?]) => {
        mod $module {
            $(
                #[test]
                fn $case() {
                    $crate::run_case(
                        concat!(stringify!($module), "::", stringify!($case)),
                        super::$fixture,
                        $crate::cases::$module::$case,
                    );
                }
            )*
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($fixture:ident) => {
        $crate::__conformance_module!($fixture, append: [
            first_append_gets_version_0_and_position_1,
            batch_append_gets_consecutive_versions_and_positions,
            later_appends_continue_versions_and_positions,
            streams_share_one_global_sequence,
            read_back_returns_every_field,
            default_data_and_metadata_are_empty_objects,
            stream_version_follows_appends,
            any_assigns_real_versions,
            recorded_at_is_utc_microseconds_within_the_append,
            events_of_one_append_share_recorded_at,
            recorded_at_follows_position_order,
            given_ids_are_kept,
            many_appends_keep_positions_gapless,
            large_batch_is_one_append,
            unusual_valid_stream_names_work,
            stream_names_are_exact,
            append_result_matches_the_global_log,
        ]);
        $crate::__conformance_module!($fixture, concurrency: [
            writers_on_separate_streams_all_succeed,
            readers_never_see_a_gap,
            concurrent_identical_appends_are_written_once,
            racing_the_same_id_into_different_streams,
            racing_links_of_one_event,
            optimistic_retry_loops_converge,
            mixed_operations_leave_a_consistent_store,
        ]);
        $crate::__conformance_module!($fixture, delete: [
            deleted_stream_reads_empty,
            deleted_stream_is_recreated_from_version_0,
            events_stay_by_id_and_in_the_global_log,
            events_stay_in_the_category,
            links_from_elsewhere_still_resolve,
            other_streams_are_untouched,
            deleting_a_missing_stream,
            delete_checks_the_expected_version,
            deleting_twice,
            deleted_stream_leaves_the_listing,
            deleting_removes_links_only_from_that_stream,
            deleted_events_can_be_linked_back,
        ]);
        $crate::__conformance_module!($fixture, expected_version: [
            no_stream_on_new_stream_succeeds,
            no_stream_on_existing_stream_fails,
            no_stream_on_deleted_stream_succeeds,
            stream_exists_on_new_stream_fails,
            stream_exists_on_existing_stream_succeeds,
            stream_exists_on_deleted_stream_fails,
            exact_current_version_succeeds_and_chains,
            exact_stale_version_fails,
            exact_future_version_fails,
            exact_zero_on_new_stream_fails,
            exact_old_version_on_deleted_stream_fails,
            any_succeeds_on_new_existing_and_deleted_streams,
            failed_check_writes_nothing_and_consumes_no_position,
            exact_out_of_range_is_invalid,
            conflict_message_names_stream_expected_and_actual,
            racing_exact_writers_have_one_winner,
            racing_no_stream_writers_have_one_winner,
            racing_any_writers_all_land,
            store_keeps_working_after_conflicts,
        ]);
        $crate::__conformance_module!($fixture, follow_and_watch: [
            read_streams_in_batches,
            invalid_streaming_read_yields_one_error,
            follow_all_history_then_live,
            follow_wakes_on_the_first_commit,
            follow_stream_from_a_version,
            follow_a_category,
            follow_with_a_type_filter,
            follow_with_a_limit_ends,
            follow_sees_every_event_under_concurrent_writers,
            fresh_head_is_at_position_0,
            head_moves_after_each_append,
            links_and_deletes_are_commits,
            waiting_on_the_head_wakes_after_a_commit,
            rejected_and_retried_writes_do_not_move_the_head,
            every_receiver_sees_the_head,
        ]);
        $crate::__conformance_module!($fixture, ids_and_duplicates: [
            exact_retry_returns_the_original_result,
            retry_ignores_the_expected_version,
            retry_after_later_appends_returns_the_original,
            single_event_retry_is_idempotent,
            partial_overlap_is_a_duplicate,
            superset_of_a_committed_append_is_a_duplicate,
            same_id_in_another_stream_is_a_duplicate,
            reordered_retry_is_a_duplicate,
            same_id_twice_in_one_append_is_a_duplicate,
            reusing_a_linked_events_id_is_a_duplicate,
            retry_after_delete_is_a_duplicate,
            duplicate_keeps_the_original_and_leaves_no_gap,
            ids_are_unique_across_streams,
        ]);
        $crate::__conformance_module!($fixture, limits_and_bad_input: [
            event_at_the_size_limit_is_accepted,
            one_byte_over_the_limit_is_rejected,
            size_counts_metadata_and_type,
            oversized_event_in_a_batch_rejects_all,
            invalid_json_data_is_rejected,
            invalid_json_metadata_is_rejected,
            metadata_must_be_an_object,
            bad_event_types_are_rejected,
            nil_id_is_rejected,
            empty_append_is_rejected,
            one_bad_event_rejects_the_batch,
            too_many_events_in_one_append,
            rejected_writes_leave_no_gap,
            read_limit_zero_is_rejected,
            bad_batch_sizes_are_rejected,
            bad_categories_are_rejected,
            from_out_of_range_is_rejected,
            bad_type_filters_are_rejected,
            out_of_range_expected_versions_are_rejected,
            invalid_stream_names_are_rejected,
            streams_limit_zero_is_rejected,
            follow_backward_is_rejected,
        ]);
        $crate::__conformance_module!($fixture, links: [
            link_reads_through_with_origin,
            link_many_keeps_the_given_order,
            links_and_appends_share_versions,
            linking_twice_is_a_duplicate,
            linking_into_its_own_stream_is_a_duplicate,
            same_id_twice_in_one_link_is_a_duplicate,
            linking_an_unknown_id_is_not_found,
            linking_nil_or_nothing_is_invalid,
            link_checks_the_expected_version,
            link_to_a_deleted_streams_event,
            links_are_not_in_the_global_log,
            links_are_not_in_category_reads,
            event_by_id_of_a_linked_event_is_as_appended,
            relinking_keeps_the_first_origin,
            deleting_the_linking_stream_keeps_the_original,
            one_event_linked_into_many_streams,
            link_entries_obey_read_options,
        ]);
        $crate::__conformance_module!($fixture, lookup: [
            event_by_id_returns_the_event,
            unknown_id_is_none,
            nil_id_lookup_is_none,
            event_by_id_after_its_stream_is_deleted,
            stream_version_counts_links,
            near_miss_ids_are_not_found,
        ]);
        $crate::__conformance_module!($fixture, payload_fidelity: [
            unicode_data_survives,
            unicode_types_and_keys_survive,
            big_integers_survive,
            floats_survive_textually,
            escapes_survive_unexpanded,
            key_order_survives,
            duplicate_keys_survive,
            whitespace_inside_survives,
            any_json_value_is_data,
            metadata_with_correlation_and_causation,
            one_megabyte_payload_survives,
            many_payloads_keep_their_own_bytes,
            surrounding_whitespace_survives,
        ]);
        $crate::__conformance_module!($fixture, read_options_combined: [
            stream_read_option_matrix,
            global_read_option_matrix,
            category_read_option_matrix,
            time_ranges_combine_with_every_option,
            limit_counts_only_matching_events,
            several_types_keep_the_scope_order,
            sparse_type_matches_page_correctly,
            filters_that_match_nothing_read_empty,
            read_page_and_streaming_agree,
        ]);
        $crate::__conformance_module!($fixture, reads_all: [
            empty_store_reads_empty,
            forward_in_position_order_across_streams,
            backward_newest_first,
            from_is_an_inclusive_position,
            from_zero,
            from_beyond_the_end,
            limit_caps_the_result,
            paging_in_small_batches,
            read_page_returns_one_page,
            keeps_deleted_streams_events,
            large_log_is_gapless,
        ]);
        $crate::__conformance_module!($fixture, reads_category: [
            category_collects_its_streams_in_position_order,
            category_is_the_whole_part_before_the_first_dash,
            name_without_dash_is_its_own_category,
            unknown_category_is_empty,
            category_backward_from_and_limit,
            category_paging_over_sparse_matches,
            category_keeps_deleted_streams_events,
            category_names_are_case_sensitive,
            category_special_characters_match_literally,
            unicode_categories,
        ]);
        $crate::__conformance_module!($fixture, reads_stream: [
            missing_stream_reads_empty,
            forward_read_in_version_order,
            backward_read_newest_first,
            forward_from_is_inclusive,
            backward_from_is_inclusive,
            backward_from_zero_gives_the_first_event,
            forward_from_beyond_the_end_is_empty,
            backward_from_beyond_the_end_starts_at_the_last,
            limit_caps_the_result,
            paging_in_small_batches,
            read_page_returns_one_page,
            long_stream_reads_completely,
            prefix_sharing_streams_stay_apart,
        ]);
        $crate::__conformance_module!($fixture, streams_listing: [
            empty_store_lists_nothing,
            lists_every_stream_in_name_order_with_versions,
            prefix_selects_matching_names,
            limit_caps_the_listing,
            after_cursor_pages_through_everything,
            after_cursor_outside_the_prefix,
            deleted_streams_are_not_listed,
            link_only_streams_are_listed,
            prefix_special_characters_match_literally,
            unicode_prefixes,
            listed_version_follows_writes,
        ]);
        $crate::__conformance_module!($fixture, time_filters: [
            separated_appends_get_increasing_times,
            recorded_after_is_exclusive,
            recorded_at_or_after_is_inclusive,
            recorded_before_is_exclusive,
            range_is_half_open,
            empty_or_inverted_range_is_empty,
            distant_bounds,
            bounds_in_other_offsets_mean_the_same_instant,
            time_filters_on_stream_reads,
            time_filters_on_category_reads,
            recorded_at_is_the_same_everywhere,
            time_filters_page_correctly,
        ]);
    };
}

#[cfg(test)]
mod tests {
    /// Every `pub async fn` in `src/cases` must be listed in `__conformance_cases!`, or backends would
    /// silently not run it.
    #[test]
    fn every_case_is_listed_in_the_macro() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let lib = std::fs::read_to_string(dir.join("lib.rs")).unwrap();
        let listing = &lib[lib.find("macro_rules! __conformance_cases").unwrap()..];
        let mut missing = Vec::new();
        for entry in std::fs::read_dir(dir.join("cases")).unwrap() {
            let path = entry.unwrap().path();
            let module = path.file_stem().unwrap().to_str().unwrap().to_owned();
            if module == "mod" {
                continue;
            }
            let source = std::fs::read_to_string(&path).unwrap();
            let block_start = listing
                .find(&format!("$fixture, {module}: ["))
                .unwrap_or_else(|| panic!("module {module} is not in the macro"));
            let block = &listing[block_start..];
            let block = &block[..block.find("]);").unwrap()];
            for line in source.lines() {
                if let Some(rest) = line.strip_prefix("pub async fn ") {
                    let name = &rest[..rest.find(['(', '<']).unwrap()];
                    if !block.contains(&format!(" {name},")) {
                        missing.push(format!("{module}::{name}"));
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "cases missing from the macro: {missing:?}"
        );
    }
}
