//! Fuzzing of the parsers that take outside input in herald-core — database URLs, expected versions, stream
//! names and categories, RFC 3339 timestamps, read queries — with arbitrary strings and with valid inputs
//! mutated (characters inserted, deleted, replaced, cut, repeated). Each must answer every input with a value
//! or [`Error::InvalidInput`]: no panic, no other error kind, and no input may take long. What parses must
//! stay true to its rules (a stream name within its limits; a URL whose normal form parses to the same URL).
//!
//! `HERALD_FUZZ_CASES` (default 1,000 per test) runs more; `PROPTEST_RNG_SEED` replays a run.

use std::time::{Duration, Instant};

use herald_core::url::DatabaseUrl;
use herald_core::{Error, ExpectedVersion, ReadQuery, StreamName, timefmt};
use proptest::prelude::*;
use proptest::test_runner::Config;

/// Longest time one input may take: parsers are linear in their (bounded) input; a slow one is a bug.
const PER_INPUT: Duration = Duration::from_millis(500);

fn config() -> Config {
    let cases = std::env::var("HERALD_FUZZ_CASES")
        .map(|v| v.parse().expect("HERALD_FUZZ_CASES is a number"))
        .unwrap_or(1_000);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Pieces that break parsers: separators, escapes, cut UTF-8, control characters, huge numbers.
const NASTY: &[&str] = &[
    "://",
    "?",
    "&",
    "=",
    "#",
    "%",
    "%2",
    "%ZZ",
    "%00",
    "%C3",
    "%3F",
    "%23",
    "@",
    ":",
    "[",
    "]",
    "[::1]",
    "/",
    "//",
    "\\",
    "..",
    "\0",
    "\n",
    "\r\n",
    "\u{1b}[31m",
    "\u{7f}",
    "\u{fffd}",
    "é",
    "\u{202e}",
    " ",
    "-",
    "$",
    "-1",
    "0",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551616",
    "1e9",
    "+",
    "Z",
    "T",
    "+23:59",
    "-23:59",
    "60",
    "99999",
    "read_connections=0",
    "schema=",
    "x=y&x=z",
];

#[derive(Debug, Clone)]
enum Mutation {
    Insert(usize, String),
    Delete(usize, usize),
    Replace(usize, char),
    Truncate(usize),
    Repeat(usize, usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let piece = prop_oneof![
        3 => proptest::sample::select(NASTY).prop_map(str::to_owned),
        1 => any::<char>().prop_map(String::from),
    ];
    prop_oneof![
        4 => (any::<usize>(), piece).prop_map(|(at, s)| Mutation::Insert(at, s)),
        2 => (any::<usize>(), 1usize..8).prop_map(|(at, n)| Mutation::Delete(at, n)),
        2 => (any::<usize>(), any::<char>()).prop_map(|(at, c)| Mutation::Replace(at, c)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), 1usize..6, 2usize..200).prop_map(|(at, n, k)| Mutation::Repeat(at, n, k)),
    ]
}

/// The char boundary at or before `at % (len + 1)`.
fn boundary(s: &str, at: usize) -> usize {
    let mut at = at % (s.len() + 1);
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(mut s: String, mutations: &[Mutation]) -> String {
    for m in mutations {
        match m {
            Mutation::Insert(at, piece) => {
                let at = boundary(&s, *at);
                s.insert_str(at, piece);
            }
            Mutation::Delete(at, n) => {
                let start = boundary(&s, *at);
                let end = boundary(&s, start + n).max(start);
                s.replace_range(start..end, "");
            }
            Mutation::Replace(at, c) => {
                let at = boundary(&s, *at);
                if let Some(old) = s[at..].chars().next() {
                    s.replace_range(at..at + old.len_utf8(), &c.to_string());
                }
            }
            Mutation::Truncate(at) => {
                let at = boundary(&s, *at);
                s.truncate(at);
            }
            Mutation::Repeat(at, n, times) => {
                let start = boundary(&s, *at);
                let end = boundary(&s, start + n).max(start);
                let part = s[start..end].repeat(*times);
                s.insert_str(end, &part);
            }
        }
    }
    s
}

/// Valid inputs from `seeds`, mutated, mixed with arbitrary strings.
fn inputs(seeds: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (proptest::sample::select(seeds), proptest::collection::vec(mutation(), 0..5))
            .prop_map(|(seed, ms)| apply(seed.to_owned(), &ms)),
        1 => any::<String>(),
        1 => proptest::collection::vec(proptest::sample::select(NASTY), 0..12).prop_map(|p| p.concat()),
    ]
}

/// Runs `f` and fails if it took longer than [`PER_INPUT`].
fn timed<T>(input: &str, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    let start = Instant::now();
    let value = f();
    let took = start.elapsed();
    prop_assert!(took < PER_INPUT, "{input:?} took {took:?}");
    Ok(value)
}

/// Refused input must be `InvalidInput`, never another kind.
fn refused_as_invalid<T: std::fmt::Debug>(
    input: &str,
    result: &herald_core::Result<T>,
) -> Result<(), TestCaseError> {
    if let Err(e) = result {
        prop_assert!(
            matches!(e, Error::InvalidInput(_)),
            "{input:?} was refused as {e:?}, not invalid input"
        );
    }
    Ok(())
}

const URLS: &[&str] = &[
    "sqlite://herald.db",
    "sqlite://shop.db?durability=normal&read_connections=2",
    "sqlite:///var/lib/herald/events.db",
    "sqlite://./data/a%20b.db",
    "postgres://app:s3cret@db.internal:5433/orders?schema=app&connect_timeout=2",
    "postgresql://localhost/test",
    "postgres://[::1]:5432/db",
    "memory://",
];

proptest! {
    #![proptest_config(config())]

    /// Every URL parses or is invalid input; a parsed URL answers every accessor, its normal form parses to
    /// the same URL, and its display (password hidden) parses too.
    #[test]
    fn database_urls(input in inputs(URLS)) {
        let parsed = timed(&input, || DatabaseUrl::parse(&input))?;
        refused_as_invalid(&input, &parsed)?;
        if let Ok(url) = parsed {
            let _ = (url.scheme(), url.path(), url.host(), url.port(), url.user(), url.password());
            let _ = (url.database(), url.options(), url.option("schema"), url.check_options(&["schema"]));
            refused_as_invalid(&input, &url.option_in("read_connections", 1..=64usize))?;
            refused_as_invalid(&input, &url.option_parsed::<ExpectedVersion>("expected"))?;
            let _ = (url.without_options(&["schema", "durability"]), format!("{url:?}"));
            let again = DatabaseUrl::parse(url.as_str());
            prop_assert_eq!(again.as_ref().ok(), Some(&url), "normal form {:?} of {:?}", url.as_str(), input);
            let shown = url.to_string();
            prop_assert!(DatabaseUrl::parse(&shown).is_ok() || shown.contains('\\'),
                "the display {:?} of {:?} does not parse", shown, input);
        }
    }

    /// `any`, `no-stream`, `exists` or a version number; what parses prints back as itself.
    #[test]
    fn expected_versions(input in inputs(&["any", "no-stream", "exists", "0", "42", "9223372036854775807"])) {
        let parsed = timed(&input, || input.parse::<ExpectedVersion>())?;
        refused_as_invalid(&input, &parsed)?;
        if let Ok(v) = parsed {
            prop_assert_eq!(v.to_string().parse::<ExpectedVersion>().ok(), Some(v));
            prop_assert!(v.validate().is_ok(), "{:?} parses but is out of range", input);
        }
    }

    /// Stream names and categories keep their rules: 1 to 255 bytes, no control character, no leading `$`;
    /// a category has no `-`.
    #[test]
    fn stream_names_and_categories(input in inputs(&["order-1", "order", "ünïcødé-✓", "a b-c-d", "-x"])) {
        let parsed = timed(&input, || StreamName::new(input.clone()))?;
        refused_as_invalid(&input, &parsed)?;
        if let Ok(name) = parsed {
            prop_assert!(!name.as_str().is_empty() && name.as_str().len() <= 255);
            prop_assert!(!name.as_str().chars().any(char::is_control) && !name.as_str().starts_with('$'));
            let category = name.category().to_owned();
            let read = ReadQuery::category(category.clone()).validate();
            refused_as_invalid(&input, &read)?;
            prop_assert!(read.is_ok() || category.is_empty(), "category {:?} of {:?} refused", category, input);
        }
        let read = timed(&input, || ReadQuery::category(input.clone()).validate())?;
        refused_as_invalid(&input, &read)?;
        prop_assert!(read.is_err() || !input.contains('-'));
        let typed = timed(&input, || ReadQuery::all().types([input.clone()]).validate())?;
        refused_as_invalid(&input, &typed)?;
    }

    /// Timestamps as the CLI takes them (`read --after/--before`): parsed or invalid input; a parsed one
    /// converts to the stores' microseconds and back without panicking.
    #[test]
    fn rfc3339_timestamps(input in inputs(&[
        "2026-11-26T17:37:18.123456Z", "2026-01-31T12:00:00+01:00", "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999999-00:00", "1970-01-01T00:00:00Z",
    ])) {
        let parsed = timed(&input, || timefmt::parse_rfc3339(&input))?;
        refused_as_invalid(&input, &parsed)?;
        if let Ok(t) = parsed {
            let micros = timefmt::to_unix_micros(t);
            let back = timefmt::from_unix_micros(micros);
            prop_assert!(back.is_ok(), "{:?}: {} µs do not convert back: {:?}", input, micros, back);
            let query = ReadQuery::all().recorded_after(t).recorded_before(t);
            prop_assert!(query.validate().is_ok());
        }
    }

    /// A read query from outside values (CLI flags, later HTTP query strings) validates or is invalid input.
    #[test]
    fn read_queries(
        from in proptest::option::of(any::<u64>()),
        limit in proptest::option::of(any::<u64>()),
        batch in any::<usize>(),
        backward in any::<bool>(),
    ) {
        let mut query = ReadQuery::all().batch_size(batch);
        query.from = from;
        query.limit = limit;
        if backward {
            query = query.backward();
        }
        let checked = query.validate();
        refused_as_invalid("query", &checked)?;
        if checked.is_ok() {
            prop_assert!(query.page_size() >= 1 && query.page_size() <= batch);
        }
    }
}
