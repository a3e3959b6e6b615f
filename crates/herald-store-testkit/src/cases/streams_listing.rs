//! Listing streams by prefix, in name order, with an `after` cursor and a limit.

use herald_core::{EventStore, ExpectedVersion, StreamInfo};

use crate::Capabilities;
use crate::support::*;

fn names(infos: &[StreamInfo]) -> Vec<&str> {
    infos.iter().map(|s| s.stream.as_str()).collect()
}

async fn fixture(store: &Store) {
    for (name, n) in [
        ("order-2", 1),
        ("order-10", 3),
        ("invoice-1", 2),
        ("order-1", 2),
        ("orders-1", 1),
        ("order", 1),
    ] {
        append_n(store, name, n).await;
    }
}

/// An empty store lists nothing.
pub async fn empty_store_lists_nothing(store: Store, _caps: Capabilities) {
    assert!(store.streams("", None, 100).await.unwrap().is_empty());
}

/// Every stream is listed once, in name (byte) order, with its current version.
pub async fn lists_every_stream_in_name_order_with_versions(store: Store, _caps: Capabilities) {
    fixture(&store).await;
    let all = store.streams("", None, 100).await.unwrap();
    assert_eq!(
        names(&all),
        vec![
            "invoice-1",
            "order",
            "order-1",
            "order-10",
            "order-2",
            "orders-1"
        ]
    );
    let versions: Vec<u64> = all.iter().map(|s| s.version).collect();
    assert_eq!(versions, vec![1, 0, 1, 2, 0, 0]);
}

/// A prefix selects the streams whose names start with it, byte for byte.
pub async fn prefix_selects_matching_names(store: Store, _caps: Capabilities) {
    fixture(&store).await;
    assert_eq!(
        names(&store.streams("order-", None, 100).await.unwrap()),
        vec!["order-1", "order-10", "order-2"]
    );
    assert_eq!(
        names(&store.streams("order", None, 100).await.unwrap()),
        vec!["order", "order-1", "order-10", "order-2", "orders-1"]
    );
    assert_eq!(
        names(&store.streams("order-1", None, 100).await.unwrap()),
        vec!["order-1", "order-10"]
    );
    assert!(store.streams("zzz", None, 100).await.unwrap().is_empty());
    assert!(store.streams("Order", None, 100).await.unwrap().is_empty());
}

/// The limit caps the listing.
pub async fn limit_caps_the_listing(store: Store, _caps: Capabilities) {
    fixture(&store).await;
    assert_eq!(
        names(&store.streams("", None, 2).await.unwrap()),
        vec!["invoice-1", "order"]
    );
    assert_eq!(
        names(&store.streams("order-", None, 1).await.unwrap()),
        vec!["order-1"]
    );
}

/// `after` is an exclusive cursor: paging with it visits every stream exactly once.
pub async fn after_cursor_pages_through_everything(store: Store, _caps: Capabilities) {
    fixture(&store).await;
    assert_eq!(
        names(&store.streams("", Some("order-1"), 100).await.unwrap()),
        vec!["order-10", "order-2", "orders-1"]
    );
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.streams("order", after.as_deref(), 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        after = Some(page.last().unwrap().stream.clone());
        seen.extend(page.into_iter().map(|s| s.stream));
    }
    assert_eq!(
        seen,
        vec!["order", "order-1", "order-10", "order-2", "orders-1"]
    );
}

/// An `after` that is not a stream name still works as a cursor; before the prefix range it changes
/// nothing, after it the listing is empty.
pub async fn after_cursor_outside_the_prefix(store: Store, _caps: Capabilities) {
    fixture(&store).await;
    assert_eq!(
        names(&store.streams("order-", Some("order-0"), 100).await.unwrap()),
        vec!["order-1", "order-10", "order-2"]
    );
    assert_eq!(
        names(&store.streams("order-", Some("a"), 100).await.unwrap()),
        vec!["order-1", "order-10", "order-2"]
    );
    assert!(
        store
            .streams("order-", Some("z"), 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .streams("", Some("orders-1"), 100)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Deleted streams are not listed.
pub async fn deleted_streams_are_not_listed(store: Store, _caps: Capabilities) {
    fixture(&store).await;
    store
        .delete_stream(&stream("order-10"), ExpectedVersion::Any)
        .await
        .unwrap();
    assert_eq!(
        names(&store.streams("order-", None, 100).await.unwrap()),
        vec!["order-1", "order-2"]
    );
}

/// Streams holding only links are listed, with the version of their last link.
pub async fn link_only_streams_are_listed(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "a", 3).await;
    store
        .link(&stream("links"), &a.ids[..2], ExpectedVersion::Any)
        .await
        .unwrap();
    let all = store.streams("", None, 100).await.unwrap();
    assert_eq!(
        all,
        vec![
            StreamInfo {
                stream: "a".into(),
                version: 2
            },
            StreamInfo {
                stream: "links".into(),
                version: 1
            }
        ]
    );
}

/// Prefixes with characters special to SQL `LIKE` or globs match literally.
pub async fn prefix_special_characters_match_literally(store: Store, _caps: Capabilities) {
    for name in ["a%b", "axb", "a_c", "abc", "a*d", "a\\e", "a[f]"] {
        append_n(&store, name, 1).await;
    }
    for (prefix, want) in [
        ("a%", vec!["a%b"]),
        ("a_", vec!["a_c"]),
        ("a*", vec!["a*d"]),
        ("a\\", vec!["a\\e"]),
        ("a[", vec!["a[f]"]),
    ] {
        assert_eq!(
            names(&store.streams(prefix, None, 100).await.unwrap()),
            want,
            "prefix {prefix:?}"
        );
    }
}

/// Unicode prefixes and names list correctly, in byte order.
pub async fn unicode_prefixes(store: Store, _caps: Capabilities) {
    for name in ["été-1", "été-2", "ete-1", "éte-1", "z"] {
        append_n(&store, name, 1).await;
    }
    assert_eq!(
        names(&store.streams("été", None, 100).await.unwrap()),
        vec!["été-1", "été-2"]
    );
    assert_eq!(
        names(&store.streams("", None, 100).await.unwrap()),
        vec!["ete-1", "z", "éte-1", "été-1", "été-2"]
    );
}

/// The listed version follows appends and links.
pub async fn listed_version_follows_writes(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "s", 1).await;
    append_n(&store, "t", 1).await;
    store
        .link(&stream("t"), &a.ids, ExpectedVersion::Any)
        .await
        .unwrap();
    append_n(&store, "s", 4).await;
    let all = store.streams("", None, 100).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|s| (s.stream.as_str(), s.version))
            .collect::<Vec<_>>(),
        vec![("s", 4), ("t", 1)]
    );
}
