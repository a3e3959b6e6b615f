//! Durable subscriptions: catch-up then live without gap or duplicate, restart-resume, handler failures,
//! consumer groups with members joining and leaving: on in-memory and SQLite.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use common::Fixture;
use herald_core::{EventStoreExt, ReadQuery, RecordedEvent};
use herald_es::{BoxError, CancellationToken, EsError, EventHandler, GroupMember, Subscription};

/// Records every event it sees; optionally cancels after `stop_after` events or fails once on an event.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<RecordedEvent>>,
    stop_after: Option<(usize, CancellationToken)>,
    fail_on: Mutex<Option<uuid::Uuid>>,
}

impl Recorder {
    fn positions(&self) -> Vec<u64> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.position)
            .collect()
    }
}

#[async_trait]
impl EventHandler for Recorder {
    async fn handle(&self, event: &RecordedEvent) -> Result<(), BoxError> {
        {
            let mut fail = self.fail_on.lock().unwrap();
            if *fail == Some(event.id) {
                *fail = None;
                return Err("refused once".into());
            }
        }
        let n = {
            let mut seen = self.seen.lock().unwrap();
            seen.push(event.clone());
            seen.len()
        };
        if let Some((limit, token)) = &self.stop_after
            && n >= *limit
        {
            token.cancel();
        }
        Ok(())
    }
}

async fn category_positions(f: &Fixture, category: &str) -> Vec<u64> {
    f.store
        .read_to_vec(ReadQuery::category(category))
        .await
        .unwrap()
        .iter()
        .map(|e| e.position)
        .collect()
}

/// Waits (no sleeping) until the subscription has checkpointed `target`.
async fn wait_for(sub: &Subscription, target: u64) {
    let mut progress = sub.progress();
    progress
        .wait_for(|p| p.is_some_and(|p| p >= target))
        .await
        .unwrap();
}

async fn catches_up_then_follows_live_without_gap_or_duplicate(f: Fixture) {
    for i in 0..40 {
        f.append_raw(&format!("acct-{i}"), 20, "Deposited").await;
        f.append_raw(&format!("other-{i}"), 3, "Noise").await;
    }
    let sub = Arc::new(
        Subscription::category("acct-audit", "acct", f.store.clone(), f.checkpoints.clone())
            .unwrap()
            .batch_size(64)
            .unwrap(),
    );
    let recorder = Arc::new(Recorder::default());
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let (sub, recorder, cancel) = (sub.clone(), recorder.clone(), cancel.clone());
        async move { sub.run(&*recorder, &cancel).await }
    });
    let history_end = *category_positions(&f, "acct").await.last().unwrap();
    wait_for(&sub, history_end).await;
    // Live: writers race the subscription's switch from history to live.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = f.store.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    let s = herald_core::StreamName::new(format!("acct-live{w}")).unwrap();
                    store
                        .append(
                            &s,
                            vec![herald_core::NewEvent::new("Deposited").with_data(format!("{i}"))],
                            herald_core::ExpectedVersion::Any,
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let expected = category_positions(&f, "acct").await;
    wait_for(&sub, *expected.last().unwrap()).await;
    cancel.cancel();
    let stats = run.await.unwrap().unwrap();
    assert_eq!(
        recorder.positions(),
        expected,
        "every category event once, in order"
    );
    assert_eq!(stats.handled, expected.len() as u64);
    assert_eq!(
        f.checkpoints.load("acct-audit").await.unwrap(),
        expected.last().copied()
    );
}

async fn restart_resumes_after_the_checkpoint(f: Fixture) {
    for i in 0..10 {
        f.append_raw(&format!("acct-{i}"), 30, "Deposited").await;
    }
    let expected = category_positions(&f, "acct").await;
    let mut all_seen = Vec::new();
    // Three runs, each stopped (cancelled by its handler) at a different point, then a final run to the end.
    for stop in [1usize, 77, 150] {
        let cancel = CancellationToken::new();
        let recorder = Recorder {
            stop_after: Some((stop, cancel.clone())),
            ..Default::default()
        };
        let sub = Subscription::category("resume", "acct", f.store.clone(), f.checkpoints.clone())
            .unwrap()
            .batch_size(32)
            .unwrap();
        sub.run(&recorder, &cancel).await.unwrap();
        let seen = recorder.positions();
        assert_eq!(seen.len(), stop, "stopped right after the cancelling event");
        all_seen.extend(seen);
    }
    // Live events after the restarts.
    f.append_raw("acct-late", 5, "Deposited").await;
    let expected_all = category_positions(&f, "acct").await;
    assert!(expected_all.len() > expected.len());
    let sub =
        Subscription::category("resume", "acct", f.store.clone(), f.checkpoints.clone()).unwrap();
    let recorder = Arc::new(Recorder::default());
    let cancel = CancellationToken::new();
    let sub = Arc::new(sub);
    let run = tokio::spawn({
        let (sub, recorder, cancel) = (sub.clone(), recorder.clone(), cancel.clone());
        async move { sub.run(&*recorder, &cancel).await }
    });
    wait_for(&sub, *expected_all.last().unwrap()).await;
    cancel.cancel();
    run.await.unwrap().unwrap();
    all_seen.extend(recorder.positions());
    assert_eq!(
        all_seen, expected_all,
        "no loss, no duplicate across restarts"
    );
}

async fn stream_subscription_uses_versions(f: Fixture) {
    f.append_raw("acct-1", 10, "Deposited").await;
    f.append_raw("acct-2", 10, "Deposited").await;
    let stream = herald_core::StreamName::new("acct-1").unwrap();
    let cancel = CancellationToken::new();
    let recorder = Recorder {
        stop_after: Some((10, cancel.clone())),
        ..Default::default()
    };
    let sub = Subscription::stream("one", stream, f.store.clone(), f.checkpoints.clone()).unwrap();
    let stats = sub.run(&recorder, &cancel).await.unwrap();
    assert_eq!(stats.cursor, Some(9));
    assert!(
        recorder
            .seen
            .lock()
            .unwrap()
            .iter()
            .all(|e| e.stream == "acct-1")
    );
    assert_eq!(f.checkpoints.load("one").await.unwrap(), Some(9));
    // Group membership makes no sense on one stream.
    assert!(sub.member(GroupMember::new(0, 2).unwrap()).is_err());
}

async fn handler_failure_stops_before_the_failed_event(f: Fixture) {
    f.append_raw("acct-1", 10, "Deposited").await;
    let events = f
        .store
        .read_to_vec(ReadQuery::category("acct"))
        .await
        .unwrap();
    let recorder = Recorder::default();
    *recorder.fail_on.lock().unwrap() = Some(events[4].id);
    let sub =
        Subscription::category("fails", "acct", f.store.clone(), f.checkpoints.clone()).unwrap();
    let cancel = CancellationToken::new();
    match sub.run(&recorder, &cancel).await.unwrap_err() {
        EsError::Handler {
            handler, event_id, ..
        } => {
            assert_eq!(handler, "fails");
            assert_eq!(event_id, events[4].id);
        }
        other => panic!("expected a handler error, got {other}"),
    }
    assert_eq!(
        f.checkpoints.load("fails").await.unwrap(),
        Some(events[3].position)
    );
    // The next run delivers the failed event again, then the rest.
    let stop = CancellationToken::new();
    let again = Recorder {
        stop_after: Some((6, stop.clone())),
        ..Default::default()
    };
    sub.run(&again, &stop).await.unwrap();
    assert_eq!(
        again.positions(),
        events[4..].iter().map(|e| e.position).collect::<Vec<_>>()
    );
}

async fn type_filter_and_cancel_while_idle(f: Fixture) {
    f.append_raw("acct-1", 5, "Deposited").await;
    f.append_raw("acct-1", 5, "Withdrawn").await;
    let sub = Arc::new(
        Subscription::category("typed", "acct", f.store.clone(), f.checkpoints.clone())
            .unwrap()
            .types(["Withdrawn"])
            .unwrap(),
    );
    let recorder = Arc::new(Recorder::default());
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let (sub, recorder, cancel) = (sub.clone(), recorder.clone(), cancel.clone());
        async move { sub.run(&*recorder, &cancel).await }
    });
    wait_for(&sub, 10).await;
    // Idle now (waiting for live events): cancellation must end the run.
    cancel.cancel();
    run.await.unwrap().unwrap();
    let seen = recorder.seen.lock().unwrap();
    assert_eq!(seen.len(), 5);
    assert!(seen.iter().all(|e| e.event_type == "Withdrawn"));
}

/// Runs a consumer group of `count` members until every one has checkpointed `target`; returns, per member,
/// what it handled.
async fn run_group(f: &Fixture, count: u32, target: u64) -> Vec<Vec<RecordedEvent>> {
    let cancel = CancellationToken::new();
    let mut runs = Vec::new();
    let mut subs = Vec::new();
    for index in 0..count {
        let sub = Arc::new(
            Subscription::category("billing", "acct", f.store.clone(), f.checkpoints.clone())
                .unwrap()
                .batch_size(16)
                .unwrap()
                .member(GroupMember::new(index, count).unwrap())
                .unwrap(),
        );
        let recorder = Arc::new(Recorder::default());
        runs.push((
            recorder.clone(),
            tokio::spawn({
                let (sub, cancel) = (sub.clone(), cancel.clone());
                async move { sub.run(&*recorder, &cancel).await }
            }),
        ));
        subs.push(sub);
    }
    for sub in &subs {
        wait_for(sub, target).await;
    }
    cancel.cancel();
    let mut handled = Vec::new();
    for (recorder, run) in runs {
        run.await.unwrap().unwrap();
        handled.push(recorder.seen.lock().unwrap().clone());
    }
    handled
}

fn check_ownership(handled: &[Vec<RecordedEvent>], count: u32) {
    let mut owner_of: BTreeMap<String, usize> = BTreeMap::new();
    for (index, events) in handled.iter().enumerate() {
        let member = GroupMember::new(index as u32, count).unwrap();
        let mut last_version: BTreeMap<&str, u64> = BTreeMap::new();
        for e in events {
            assert!(member.owns(&e.stream), "member {index} got {}", e.stream);
            if let Some(prev) = owner_of.insert(e.stream.clone(), index) {
                assert_eq!(prev, index, "stream {} handled by two members", e.stream);
            }
            if let Some(v) = last_version.insert(&e.stream, e.version) {
                assert!(e.version > v, "per-stream order broken in {}", e.stream);
            }
        }
    }
}

async fn consumer_group_members_own_streams_and_rebalance_on_restart(f: Fixture) {
    for i in 0..30 {
        f.append_raw(&format!("acct-{i}"), 4, "Deposited").await;
    }
    let target = *category_positions(&f, "acct").await.last().unwrap();

    // Generation 1: three members.
    let handled = run_group(&f, 3, target).await;
    check_ownership(&handled, 3);
    let ids: Vec<_> = handled.iter().flatten().map(|e| e.id).collect();
    assert_eq!(ids.len(), 120, "every event handled once across the group");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 120);
    assert!(
        handled.iter().all(|h| !h.is_empty()),
        "30 streams spread over 3 members"
    );

    // A member leaves: restart as two. New members start at the old generation's safe point (all caught
    // up here), so only new events are handled, each by exactly one member.
    for i in 0..30 {
        f.append_raw(&format!("acct-{i}"), 1, "Deposited").await;
    }
    f.append_raw("acct-new", 2, "Deposited").await;
    let all = f
        .store
        .read_to_vec(ReadQuery::category("acct"))
        .await
        .unwrap();
    let target = all.last().unwrap().position;
    let handled = run_group(&f, 2, target).await;
    check_ownership(&handled, 2);
    let got: Vec<_> = handled.iter().flatten().map(|e| e.id).collect();
    let new: HashSet<_> = all[120..].iter().map(|e| e.id).collect();
    assert_eq!(got.len(), new.len());
    assert_eq!(got.into_iter().collect::<HashSet<_>>(), new);

    // Two join: restart as four.
    f.append_raw("acct-x", 3, "Deposited").await;
    let all = f
        .store
        .read_to_vec(ReadQuery::category("acct"))
        .await
        .unwrap();
    let handled = run_group(&f, 4, all.last().unwrap().position).await;
    check_ownership(&handled, 4);
    assert_eq!(handled.iter().map(Vec::len).sum::<usize>(), 3);
}

async fn new_group_members_start_at_the_safe_point(f: Fixture) {
    let cp = &f.checkpoints;
    let sub = |index, count| {
        Subscription::category("g", "acct", f.store.clone(), f.checkpoints.clone())
            .unwrap()
            .member(GroupMember::new(index, count).unwrap())
            .unwrap()
    };
    assert_eq!(sub(0, 2).start_cursor().await.unwrap(), None);
    // Generation of 3 members, unevenly advanced: the safe point is the lowest.
    cp.save("g#0of3", 50).await.unwrap();
    cp.save("g#1of3", 20).await.unwrap();
    // Incomplete generation: not trusted (member 2 never checkpointed), start from the beginning.
    assert_eq!(sub(0, 2).start_cursor().await.unwrap(), None);
    cp.save("g#2of3", 70).await.unwrap();
    assert_eq!(sub(0, 2).start_cursor().await.unwrap(), Some(20));
    assert_eq!(sub(1, 2).start_cursor().await.unwrap(), Some(20));
    // A member with its own checkpoint uses it.
    cp.save("g#1of2", 90).await.unwrap();
    assert_eq!(sub(1, 2).start_cursor().await.unwrap(), Some(90));
    assert_eq!(sub(0, 2).start_cursor().await.unwrap(), Some(20));
    // Once generation 2 is complete, a later generation starts at the highest safe point.
    cp.save("g#0of2", 80).await.unwrap();
    assert_eq!(sub(0, 4).start_cursor().await.unwrap(), Some(80));
    // Another subscription's checkpoints never count.
    cp.save("gx#0of1", 1000).await.unwrap();
    assert_eq!(sub(3, 4).start_cursor().await.unwrap(), Some(80));
    assert!(GroupMember::new(2, 2).is_err());
    assert!(GroupMember::new(0, 0).is_err());
}

async fn typed_handler_upcasts_and_names_undecodable_events(f: Fixture) {
    use common::OrderEvent;
    use herald_es::{Codec, DecodedEvent, Upcasters, typed_handler};
    let stream = herald_core::StreamName::new("order-t").unwrap();
    let raw = |data: &str, v: u32| {
        herald_core::NewEvent::new("ItemAdded")
            .with_data(data)
            .with_metadata(format!(r#"{{"schema_version":{v}}}"#))
    };
    let written = f
        .store
        .append(
            &stream,
            vec![
                raw(r#"{"sku":"a"}"#, 2),
                raw(r#"{"sku":"b","qty":4}"#, 3),
                raw("[]", 3),
            ],
            herald_core::ExpectedVersion::Any,
        )
        .await
        .unwrap();
    let codec = Codec::<OrderEvent>::new(Upcasters::new().add("ItemAdded", 2, |mut d| {
        d["qty"] = serde_json::json!(1);
        Ok(d)
    }));
    let got: Arc<Mutex<Vec<OrderEvent>>> = Arc::default();
    let handler = typed_handler(codec, {
        let got = got.clone();
        move |e: DecodedEvent<OrderEvent>| {
            got.lock().unwrap().push(e.event);
            async { Ok(()) }
        }
    });
    let sub =
        Subscription::stream("typed", stream, f.store.clone(), f.checkpoints.clone()).unwrap();
    let err = sub
        .run(&handler, &CancellationToken::new())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&written.ids[2].to_string()), "{msg}");
    assert!(
        msg.contains("ItemAdded") && msg.contains("schema version 3"),
        "{msg}"
    );
    assert_eq!(
        *got.lock().unwrap(),
        [
            OrderEvent::ItemAdded {
                sku: "a".into(),
                qty: 1
            },
            OrderEvent::ItemAdded {
                sku: "b".into(),
                qty: 4
            }
        ]
    );
    assert_eq!(f.checkpoints.load("typed").await.unwrap(), Some(1));
}

on_both_backends!(
    typed_handler_upcasts_and_names_undecodable_events,
    catches_up_then_follows_live_without_gap_or_duplicate,
    restart_resumes_after_the_checkpoint,
    stream_subscription_uses_versions,
    handler_failure_stops_before_the_failed_event,
    type_filter_and_cancel_while_idle,
    consumer_group_members_own_streams_and_rebalance_on_restart,
    new_group_members_start_at_the_safe_point,
);

#[test]
fn stable_hash_is_fnv1a() {
    // Published FNV-1a 64 test vectors: the hash must never change, or group ownership would move.
    assert_eq!(herald_es::stable_hash(""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(herald_es::stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(herald_es::stable_hash("foobar"), 0x8594_4171_f739_67e8);
}
