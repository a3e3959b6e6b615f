//! The command bus (handlers, middleware, typed errors, correlation) and a process manager.

mod common;

use std::sync::{Arc, Mutex};

use common::{Fixture, Order, OrderCommand, OrderError};
use herald_core::{EventStoreExt, ReadQuery, RecordedEvent, StreamName};
use herald_es::command::{
    BusError, Command, CommandBus, CommandHandler, CommandTiming, Correlation, Dispatch,
    DispatchFailure, Logging, Middleware, Next, Reply, Timing, Validation, command_fn,
    current_command,
};
use herald_es::{
    CancellationToken, CommandMetadata, ExecuteError, ProcessManager, ProcessRunner, Repository,
    Subscription,
};

struct PlaceOrder {
    id: String,
    customer: String,
}

impl Command for PlaceOrder {
    const NAME: &'static str = "PlaceOrder";
    type Output = u64;
    type Error = ExecuteError<OrderError>;
    fn validate(&self) -> Result<(), String> {
        if self.customer.is_empty() {
            return Err("customer is empty".into());
        }
        Ok(())
    }
}

struct PlaceHandler {
    repo: Repository<Order>,
}

#[async_trait::async_trait]
impl CommandHandler<PlaceOrder> for PlaceHandler {
    async fn handle(
        &self,
        c: PlaceOrder,
        meta: &CommandMetadata,
    ) -> Result<u64, ExecuteError<OrderError>> {
        let saved = self
            .repo
            .execute(
                &c.id,
                &OrderCommand::Place {
                    customer: c.customer,
                },
                meta,
            )
            .await?;
        Ok(saved.version.unwrap())
    }
}

/// Records the order middleware ran in.
struct Trace(&'static str, Arc<Mutex<Vec<String>>>);

#[async_trait::async_trait]
impl Middleware for Trace {
    async fn handle(&self, d: Dispatch, next: Next<'_>) -> Result<Reply, DispatchFailure> {
        self.1
            .lock()
            .unwrap()
            .push(format!("{} before {}", self.0, d.name));
        let r = next.run(d).await;
        self.1.lock().unwrap().push(format!("{} after", self.0));
        r
    }
}

#[tokio::test]
async fn bus_runs_middleware_in_order_and_types_results_and_errors() {
    let f = Fixture::memory().await;
    let trace = Arc::new(Mutex::new(Vec::new()));
    let notifier = herald_notify::Notifier::new();
    let timings = Arc::new(Mutex::new(Vec::<CommandTiming>::new()));
    let _sub = notifier
        .subscribe(herald_notify::Pattern::exact(Timing::EVENT), {
            let timings = timings.clone();
            move |e| {
                timings
                    .lock()
                    .unwrap()
                    .push(e.payload_as::<CommandTiming>().unwrap().clone())
            }
        })
        .guard();
    let bus = CommandBus::builder()
        .middleware(Logging)
        .middleware(Timing::new(notifier.clone()))
        .middleware(Trace("outer", trace.clone()))
        .middleware(Correlation)
        .middleware(Validation)
        .middleware(Trace("inner", trace.clone()))
        .handler(PlaceHandler {
            repo: Repository::new(f.store.clone()),
        })
        .build();
    assert!(bus.handles::<PlaceOrder>());

    let meta = CommandMetadata::new();
    let version = bus
        .dispatch(
            PlaceOrder {
                id: "1".into(),
                customer: "ada".into(),
            },
            meta.clone(),
        )
        .await
        .unwrap();
    assert_eq!(version, 0);
    assert_eq!(
        *trace.lock().unwrap(),
        [
            "outer before PlaceOrder",
            "inner before PlaceOrder",
            "inner after",
            "outer after"
        ]
    );
    // The command's metadata became the events' correlation.
    let events = f
        .store
        .read_to_vec(ReadQuery::stream(StreamName::new("order-1").unwrap()))
        .await
        .unwrap();
    assert_eq!(events[0].correlation_id(), Some(meta.command_id));
    assert_eq!(events[0].causation_id(), Some(meta.command_id));

    // Typed domain error.
    let err = bus
        .dispatch(
            PlaceOrder {
                id: "1".into(),
                customer: "bob".into(),
            },
            CommandMetadata::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        BusError::Rejected(ExecuteError::Rejected(OrderError::AlreadyPlaced))
    ));
    // Validation stops before the handler (inner trace middleware never runs).
    trace.lock().unwrap().clear();
    let err = bus
        .dispatch(
            PlaceOrder {
                id: "2".into(),
                customer: "".into(),
            },
            CommandMetadata::new(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BusError::Invalid {
                command: "PlaceOrder",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        *trace.lock().unwrap(),
        ["outer before PlaceOrder", "outer after"]
    );
    // Timing reported every dispatch with its outcome.
    let t = timings.lock().unwrap();
    assert_eq!(
        t.iter().map(|t| t.ok).collect::<Vec<_>>(),
        [true, false, false]
    );
    assert!(t.iter().all(|t| t.command == "PlaceOrder"));
    assert_eq!(t[0].command_id, meta.command_id);
}

struct Ping;
impl Command for Ping {
    const NAME: &'static str = "Ping";
    type Output = CommandMetadata;
    type Error = std::convert::Infallible;
}
struct Outer;
impl Command for Outer {
    const NAME: &'static str = "Outer";
    type Output = (CommandMetadata, CommandMetadata);
    type Error = BusError<std::convert::Infallible>;
}

#[tokio::test]
async fn nested_commands_inherit_correlation_and_unknown_commands_are_errors() {
    let bus_slot: Arc<Mutex<Option<CommandBus>>> = Arc::default();
    let bus = CommandBus::builder()
        .middleware(Correlation)
        .handler(command_fn(|_: Ping, meta: CommandMetadata| async move {
            assert_eq!(current_command().unwrap().command_id, meta.command_id);
            Ok(meta)
        }))
        .handler(command_fn({
            let slot = bus_slot.clone();
            move |_: Outer, meta: CommandMetadata| {
                let bus = slot.lock().unwrap().clone().unwrap();
                async move {
                    let inner = bus.dispatch(Ping, CommandMetadata::new()).await?;
                    Ok((meta, inner))
                }
            }
        }))
        .build();
    *bus_slot.lock().unwrap() = Some(bus.clone());
    let (outer, inner) = bus.dispatch(Outer, CommandMetadata::new()).await.unwrap();
    assert_eq!(
        outer.correlation_id,
        Some(outer.command_id),
        "top level starts a correlation"
    );
    assert_eq!(
        inner.correlation_id,
        Some(outer.command_id),
        "nested joins it"
    );
    assert_eq!(inner.causation_id, Some(outer.command_id));
    let explicit = uuid::Uuid::now_v7();
    let (outer, _) = bus
        .dispatch(Outer, CommandMetadata::new().with_correlation(explicit))
        .await
        .unwrap();
    assert_eq!(outer.correlation_id, Some(explicit));

    let empty = CommandBus::builder().build();
    assert!(matches!(
        empty
            .dispatch(Ping, CommandMetadata::new())
            .await
            .unwrap_err(),
        BusError::NoHandler { command: "Ping" }
    ));
}

#[test]
#[should_panic(expected = "already has a handler")]
fn one_handler_per_command() {
    let h = || command_fn(|_: Ping, m: CommandMetadata| async move { Ok(m) });
    let _ = CommandBus::builder().handler(h()).handler(h());
}

/// Ship an order once it is both placed and paid (events correlated by the checkout's correlation id).
struct Shipping;

#[derive(Default, Debug)]
struct ShippingState {
    placed: bool,
    paid: bool,
    events: usize,
}

struct Ship {
    order: String,
}

impl Command for Ship {
    const NAME: &'static str = "Ship";
    type Output = ();
    type Error = std::convert::Infallible;
}

impl ProcessManager for Shipping {
    const NAME: &'static str = "shipping";
    type State = ShippingState;
    type Command = Ship;

    fn interested(&self, e: &RecordedEvent) -> bool {
        matches!(e.event_type.as_str(), "OrderPlaced" | "OrderPaid")
    }
    fn apply(&self, s: &mut ShippingState, e: &RecordedEvent) {
        s.events += 1;
        match e.event_type.as_str() {
            "OrderPlaced" => s.placed = true,
            "OrderPaid" => s.paid = true,
            _ => {}
        }
    }
    fn react(&self, s: &ShippingState, e: &RecordedEvent) -> Vec<Ship> {
        if s.placed && s.paid && e.event_type == "OrderPaid" {
            vec![Ship {
                order: e.stream.clone(),
            }]
        } else {
            vec![]
        }
    }
}

async fn process_manager_builds_state_from_correlated_events(f: Fixture) {
    let shipped: Arc<Mutex<Vec<(String, CommandMetadata)>>> = Arc::default();
    let bus = CommandBus::builder()
        .middleware(Correlation)
        .handler(command_fn({
            let shipped = shipped.clone();
            move |c: Ship, m: CommandMetadata| {
                shipped.lock().unwrap().push((c.order, m));
                async { Ok(()) }
            }
        }))
        .build();
    let repo = Repository::<Order>::new(f.store.clone());
    // Two checkouts, interleaved, each with its own correlation.
    let (a, b) = (CommandMetadata::new(), CommandMetadata::new());
    let follow = |m: &CommandMetadata| CommandMetadata::new().with_correlation(m.correlation());
    repo.execute(
        "a",
        &OrderCommand::Place {
            customer: "ada".into(),
        },
        &a,
    )
    .await
    .unwrap();
    repo.execute(
        "b",
        &OrderCommand::Place {
            customer: "bob".into(),
        },
        &b,
    )
    .await
    .unwrap();
    repo.execute("a", &OrderCommand::Pay { cents: 5 }, &follow(&a))
        .await
        .unwrap();

    let runner = Arc::new(ProcessRunner::new(Shipping, f.store.clone(), bus));
    let sub = Arc::new(
        Subscription::category("shipping", "order", f.store.clone(), f.checkpoints.clone())
            .unwrap(),
    );
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let (sub, runner, cancel) = (sub.clone(), runner.clone(), cancel.clone());
        async move { sub.run(&*runner, &cancel).await }
    });
    let wait = |target: u64| {
        let mut p = sub.progress();
        async move {
            p.wait_for(|c| c.is_some_and(|c| c >= target))
                .await
                .map(|_| ())
        }
    };
    wait(3).await.unwrap();
    {
        let s = shipped.lock().unwrap();
        assert_eq!(s.len(), 1, "only checkout a is placed and paid");
        assert_eq!(s[0].0, "order-a");
        assert_eq!(s[0].1.correlation_id, Some(a.correlation()));
    }
    let paid_a = f
        .store
        .read_to_vec(ReadQuery::stream(StreamName::new("order-a").unwrap()))
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(shipped.lock().unwrap()[0].1.causation_id, Some(paid_a.id));
    // State is durable in the process stream: a fresh runner sees it; redelivery is skipped.
    let state = runner.state_for(&paid_a).await.unwrap();
    assert!(state.placed && state.paid);
    assert_eq!(state.events, 2);
    herald_es::EventHandler::handle(&*runner, &paid_a)
        .await
        .unwrap();
    assert_eq!(
        shipped.lock().unwrap().len(),
        1,
        "redelivered event does not re-dispatch"
    );

    let pos = repo
        .execute("b", &OrderCommand::Pay { cents: 7 }, &follow(&b))
        .await
        .unwrap()
        .append
        .unwrap()
        .last_position;
    wait(pos).await.unwrap();
    cancel.cancel();
    run.await.unwrap().unwrap();
    let s = shipped.lock().unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(s[1].0, "order-b");
    assert_eq!(s[1].1.correlation_id, Some(b.correlation()));
}

on_both_backends!(process_manager_builds_state_from_correlated_events);
