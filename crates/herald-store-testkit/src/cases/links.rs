//! Links: an event stored once and read from several streams.

use herald_core::uuid::Uuid;
use herald_core::{EventStore, ExpectedVersion, NewEvent, Origin, ReadQuery};

use crate::Capabilities;
use crate::support::*;

async fn link(store: &Store, name: &str, ids: &[Uuid]) -> herald_core::LinkResult {
    store
        .link(&stream(name), ids, ExpectedVersion::Any)
        .await
        .unwrap_or_else(|e| panic!("linking into {name}: {e}"))
}

/// Read through the linking stream, an entry has that stream's name and version, the event's own position,
/// id, type, data, metadata and time, and an origin naming where it was appended.
pub async fn link_reads_through_with_origin(store: Store, _caps: Capabilities) {
    append_n(&store, "order-1", 2).await;
    let e = NewEvent::new("Shipped")
        .with_data(r#"{"x":1}"#)
        .with_metadata(r#"{"m":2}"#);
    append(&store, "order-1", vec![e.clone()]).await;
    let r = link(&store, "shipments", &[e.id]).await;
    assert_eq!(r.stream, "shipments");
    assert_eq!((r.first_version, r.last_version), (0, 0));
    let original = store.event(e.id).await.unwrap().unwrap();
    let linked = read_stream(&store, "shipments").await;
    assert_eq!(linked.len(), 1);
    let l = &linked[0];
    assert_eq!((l.stream.as_str(), l.version), ("shipments", 0));
    assert_eq!(
        l.position, 3,
        "a link shows the event's own global position"
    );
    assert_eq!(
        l.origin,
        Some(Origin {
            stream: "order-1".into(),
            version: 2
        })
    );
    assert!(l.is_link());
    assert_eq!(
        (&l.id, &l.event_type, &l.data, &l.metadata, l.recorded_at),
        (
            &original.id,
            &original.event_type,
            &original.data,
            &original.metadata,
            original.recorded_at
        )
    );
}

/// Linking several ids writes them in the given order at consecutive versions.
pub async fn link_many_keeps_the_given_order(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "a", 3).await;
    let b = append_n(&store, "b", 2).await;
    let order = vec![b.ids[1], a.ids[0], a.ids[2], b.ids[0]];
    let r = link(&store, "mix", &order).await;
    assert_eq!((r.first_version, r.last_version), (0, 3));
    let read = read_stream(&store, "mix").await;
    assert_eq!(ids(&read), order);
    assert_eq!(versions(&read), vec![0, 1, 2, 3]);
    assert_eq!(positions(&read), vec![5, 1, 3, 4]);
    let origins: Vec<_> = read
        .iter()
        .map(|e| e.origin.clone().map(|o| (o.stream, o.version)))
        .collect();
    assert_eq!(
        origins,
        vec![
            Some(("b".into(), 1)),
            Some(("a".into(), 0)),
            Some(("a".into(), 2)),
            Some(("b".into(), 0))
        ]
    );
}

/// Links and appends share a stream's versions: own events and links interleave in version order.
pub async fn links_and_appends_share_versions(store: Store, _caps: Capabilities) {
    let other = append_n(&store, "other", 2).await;
    append_n(&store, "s", 1).await;
    let r = link(&store, "s", &[other.ids[0]]).await;
    assert_eq!(r.first_version, 1);
    let next = append_n(&store, "s", 1).await;
    assert_eq!(next.first_version, 2);
    assert_eq!(store.stream_version(&stream("s")).await.unwrap(), Some(2));
    let read = read_stream(&store, "s").await;
    assert_eq!(versions(&read), vec![0, 1, 2]);
    assert_eq!(positions(&read), vec![3, 1, 4]);
    assert_eq!(
        read.iter().map(|e| e.is_link()).collect::<Vec<_>>(),
        vec![false, true, false]
    );
}

/// Linking an event twice into one stream is a duplicate naming the id and stream; nothing is written.
pub async fn linking_twice_is_a_duplicate(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "a", 2).await;
    link(&store, "l", &[a.ids[0]]).await;
    let before = snapshot(&store).await;
    assert_duplicate(
        store
            .link(&stream("l"), &[a.ids[0]], ExpectedVersion::Any)
            .await,
        a.ids[0],
        "l",
    );
    assert_duplicate(
        store
            .link(&stream("l"), &[a.ids[1], a.ids[0]], ExpectedVersion::Any)
            .await,
        a.ids[0],
        "l",
    );
    assert_unchanged(&store, &before, "a duplicate link").await;
}

/// Linking an event into the stream it was appended to is a duplicate.
pub async fn linking_into_its_own_stream_is_a_duplicate(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "a", 1).await;
    let before = snapshot(&store).await;
    assert_duplicate(
        store
            .link(&stream("a"), &[a.ids[0]], ExpectedVersion::Any)
            .await,
        a.ids[0],
        "a",
    );
    assert_unchanged(&store, &before, "linking into the own stream").await;
}

/// The same id twice in one link call is a duplicate; nothing is written.
pub async fn same_id_twice_in_one_link_is_a_duplicate(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "a", 2).await;
    let before = snapshot(&store).await;
    assert_duplicate(
        store
            .link(
                &stream("l"),
                &[a.ids[0], a.ids[1], a.ids[0]],
                ExpectedVersion::Any,
            )
            .await,
        a.ids[0],
        "l",
    );
    assert_unchanged(&store, &before, "a link with an id twice").await;
}

/// Linking an unknown id is EventNotFound naming it; known ids in the same call are not linked either.
pub async fn linking_an_unknown_id_is_not_found(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "a", 1).await;
    let unknown = Uuid::now_v7();
    let before = snapshot(&store).await;
    assert_not_found(
        store
            .link(&stream("l"), &[unknown], ExpectedVersion::Any)
            .await,
        unknown,
    );
    assert_not_found(
        store
            .link(&stream("l"), &[a.ids[0], unknown], ExpectedVersion::Any)
            .await,
        unknown,
    );
    assert_unchanged(&store, &before, "a link to an unknown id").await;
    assert_eq!(store.stream_version(&stream("l")).await.unwrap(), None);
}

/// Linking the nil UUID, or nothing at all, is invalid input.
pub async fn linking_nil_or_nothing_is_invalid(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "a", 1).await;
    let before = snapshot(&store).await;
    assert_invalid(
        store
            .link(&stream("l"), &[a.ids[0], Uuid::nil()], ExpectedVersion::Any)
            .await,
        &["nil"],
    );
    assert_invalid(
        store.link(&stream("l"), &[], ExpectedVersion::Any).await,
        &["no events", "`l`"],
    );
    assert_unchanged(&store, &before, "an invalid link").await;
}

/// A link checks the expected version of the linking stream like an append does.
pub async fn link_checks_the_expected_version(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "a", 3).await;
    let r = store
        .link(&stream("l"), &[a.ids[0]], ExpectedVersion::NoStream)
        .await
        .unwrap();
    assert_eq!(r.first_version, 0);
    let before = snapshot(&store).await;
    assert_wrong_version(
        store
            .link(&stream("l"), &[a.ids[1]], ExpectedVersion::NoStream)
            .await,
        "l",
        ExpectedVersion::NoStream,
        Some(0),
    );
    assert_wrong_version(
        store
            .link(&stream("l"), &[a.ids[1]], ExpectedVersion::Exact(3))
            .await,
        "l",
        ExpectedVersion::Exact(3),
        Some(0),
    );
    assert_wrong_version(
        store
            .link(&stream("new"), &[a.ids[1]], ExpectedVersion::StreamExists)
            .await,
        "new",
        ExpectedVersion::StreamExists,
        None,
    );
    assert_unchanged(&store, &before, "a link with a wrong expected version").await;
    let r = store
        .link(
            &stream("l"),
            &[a.ids[1], a.ids[2]],
            ExpectedVersion::Exact(0),
        )
        .await
        .unwrap();
    assert_eq!((r.first_version, r.last_version), (1, 2));
    let r = store
        .link(&stream("a"), &[], ExpectedVersion::StreamExists)
        .await;
    assert_invalid(r, &["no events"]);
}

/// An event appended to a stream that was later deleted can still be linked, and reads with its origin.
pub async fn link_to_a_deleted_streams_event(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "gone", 2).await;
    store
        .delete_stream(&stream("gone"), ExpectedVersion::Any)
        .await
        .unwrap();
    link(&store, "keep", &[a.ids[1]]).await;
    let read = read_stream(&store, "keep").await;
    assert_eq!(ids(&read), vec![a.ids[1]]);
    assert_eq!(
        read[0].origin,
        Some(Origin {
            stream: "gone".into(),
            version: 1
        })
    );
}

/// Links take no global position: the global log holds each event once, as appended, and the next append
/// gets the next position.
pub async fn links_are_not_in_the_global_log(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "a", 3).await;
    link(&store, "l1", &a.ids).await;
    link(&store, "l2", &a.ids[..1]).await;
    let all = read_all(&store).await;
    assert_eq!(ids(&all), a.ids);
    assert!(all.iter().all(|e| e.origin.is_none() && e.stream == "a"));
    assert_eq!(append_n(&store, "b", 1).await.first_position, 4);
    assert_eq!(store.watch_head().borrow().position, 4);
}

/// A category read does not repeat events linked into the category's streams.
pub async fn links_are_not_in_category_reads(store: Store, _caps: Capabilities) {
    let other = append_n(&store, "other-1", 2).await;
    append_n(&store, "cat-1", 1).await;
    link(&store, "cat-2", &other.ids).await;
    let cat = read(&store, ReadQuery::category("cat")).await;
    assert_eq!(cat.len(), 1);
    assert_eq!(cat[0].stream, "cat-1");
    let others = read(&store, ReadQuery::category("other")).await;
    assert_eq!(ids(&others), other.ids);
    assert!(others.iter().all(|e| e.origin.is_none()));
}

/// `event(id)` of a linked event gives it as appended: its own stream and version, no origin.
pub async fn event_by_id_of_a_linked_event_is_as_appended(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "a", 2).await;
    link(&store, "l", &[a.ids[1]]).await;
    let e = store.event(a.ids[1]).await.unwrap().unwrap();
    assert_eq!((e.stream.as_str(), e.version, e.position), ("a", 1, 2));
    assert_eq!(e.origin, None);
}

/// Linking an entry read through a link points at the original event: the origin stays where it was
/// appended.
pub async fn relinking_keeps_the_first_origin(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "a", 1).await;
    link(&store, "l1", &a.ids).await;
    let via = read_stream(&store, "l1").await[0].id;
    link(&store, "l2", &[via]).await;
    let read = read_stream(&store, "l2").await;
    assert_eq!(
        read[0].origin,
        Some(Origin {
            stream: "a".into(),
            version: 0
        })
    );
    assert_eq!(read[0].position, 1);
}

/// Deleting the linking stream keeps the original event and its stream intact.
pub async fn deleting_the_linking_stream_keeps_the_original(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "a", 2).await;
    link(&store, "l", &a.ids).await;
    store
        .delete_stream(&stream("l"), ExpectedVersion::Exact(1))
        .await
        .unwrap();
    assert_eq!(ids(&read_stream(&store, "a").await), a.ids);
    assert_eq!(read_stream(&store, "l").await.len(), 0);
    assert_eq!(store.stream_version(&stream("l")).await.unwrap(), None);
    let r = link(&store, "l", &a.ids[..1]).await;
    assert_eq!(
        r.first_version, 0,
        "a deleted linking stream starts again at 0"
    );
}

/// An event can be linked into many streams; each shows it at its own version.
pub async fn one_event_linked_into_many_streams(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "a", 1).await;
    for i in 0..10 {
        if i % 3 > 0 {
            append_n(&store, &format!("l-{i}"), i % 3).await;
        }
        let r = link(&store, &format!("l-{i}"), &a.ids).await;
        assert_eq!(r.first_version, (i % 3) as u64);
    }
    for i in 0..10 {
        let read = read_stream(&store, &format!("l-{i}")).await;
        let last = read.last().unwrap();
        assert_eq!((last.id, last.position), (a.ids[0], 1));
    }
    assert_eq!(
        read_all(&store).await.len(),
        1 + (0..10).map(|i| i % 3).sum::<usize>()
    );
}

/// Stream reads of a linking stream honour type filters, backward direction and `from`.
pub async fn link_entries_obey_read_options(store: Store, _caps: Capabilities) {
    let a = append(
        &store,
        "a",
        vec![event("A", 0), event("B", 1), event("A", 2), event("B", 3)],
    )
    .await;
    link(&store, "l", &a.ids).await;
    let q = ReadQuery::stream(stream("l"));
    let b_only = read(&store, q.clone().types(["B"])).await;
    assert_eq!(versions(&b_only), vec![1, 3]);
    assert!(b_only.iter().all(|e| e.is_link()));
    let back = read(&store, q.clone().backward().from(2)).await;
    assert_eq!(versions(&back), vec![2, 1, 0]);
    let limited = read(&store, q.from(1).limit(2)).await;
    assert_eq!(ns(&limited), vec![1, 2]);
}
