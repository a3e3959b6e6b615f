//! A test harness for aggregates: given(events) / when(command) / then(events | error).
//!
//! Pure: no store involved. `then` also checks that each produced event survives its stored encoding
//! ([`EventSet::encode`] then [`EventSet::decode`]), which catches serde attributes that lose data.
//!
//! ```
//! # use serde::{Deserialize, Serialize};
//! # use herald_es::{Aggregate, EventSet};
//! use herald_es::testing::AggregateTest;
//! # #[derive(Debug, Default, Clone)]
//! # struct Light { on: bool }
//! # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! # #[serde(tag = "type", content = "data")]
//! # enum LightEvent { SwitchedOn, SwitchedOff }
//! # impl EventSet for LightEvent {}
//! # #[derive(Debug, PartialEq, thiserror::Error)]
//! # #[error("already on")]
//! # struct AlreadyOn;
//! # impl Aggregate for Light {
//! #     const CATEGORY: &'static str = "light";
//! #     type Command = ();
//! #     type Event = LightEvent;
//! #     type Error = AlreadyOn;
//! #     fn decide(&self, _: &()) -> Result<Vec<LightEvent>, AlreadyOn> {
//! #         if self.on { Err(AlreadyOn) } else { Ok(vec![LightEvent::SwitchedOn]) }
//! #     }
//! #     fn apply(&mut self, e: &LightEvent) { self.on = matches!(e, LightEvent::SwitchedOn) }
//! # }
//! AggregateTest::<Light>::given([]).when(()).then([LightEvent::SwitchedOn]);
//! AggregateTest::<Light>::given([LightEvent::SwitchedOn]).when(()).then_error(AlreadyOn);
//! ```

use std::fmt::Debug;

use crate::aggregate::Aggregate;
use crate::codec::EventSet;

/// The `given` step.
#[derive(Debug)]
pub struct AggregateTest<A> {
    state: A,
}

impl<A: Aggregate> AggregateTest<A> {
    /// The aggregate after these past events.
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        let mut state = A::default();
        for event in events {
            state.apply(&event);
        }
        AggregateTest { state }
    }

    /// Starts from an explicit state.
    pub fn given_state(state: A) -> Self {
        AggregateTest { state }
    }

    /// Decides `command`.
    pub fn when(self, command: A::Command) -> Then<A> {
        let result = self.state.decide(&command);
        Then {
            state: self.state,
            result,
        }
    }
}

/// The `then` step.
#[derive(Debug)]
pub struct Then<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> Then<A> {
    /// The decision.
    pub fn result(&self) -> &Result<Vec<A::Event>, A::Error> {
        &self.result
    }

    /// Asserts the command produced exactly `expected` (in order), and returns the state after them.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) -> A
    where
        A::Event: PartialEq + Debug,
        A::Error: Debug,
    {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        let events = match self.result {
            Ok(events) => events,
            Err(e) => panic!("expected events {expected:?}, but the command was rejected: {e:?}"),
        };
        assert_eq!(events, expected, "the command produced other events");
        let mut state = self.state;
        for event in &events {
            let (event_type, data) = event
                .encode()
                .unwrap_or_else(|e| panic!("event {event:?} does not encode: {e}"));
            let value: serde_json::Value = serde_json::from_str(&data)
                .unwrap_or_else(|e| panic!("event {event:?} encodes to invalid JSON: {e}"));
            let back = A::Event::decode(&event_type, value)
                .unwrap_or_else(|e| panic!("event {event:?} does not decode back: {e}"));
            assert_eq!(&back, event, "event does not survive its stored encoding");
            state.apply(event);
        }
        state
    }

    /// Asserts the command was rejected with `expected`.
    #[track_caller]
    pub fn then_error(self, expected: A::Error)
    where
        A::Event: Debug,
        A::Error: PartialEq + Debug,
    {
        match self.result {
            Ok(events) => {
                panic!("expected error {expected:?}, but the command produced {events:?}")
            }
            Err(e) => assert_eq!(e, expected, "the command was rejected with another error"),
        }
    }

    /// Asserts the command was rejected with an error matching `predicate`.
    #[track_caller]
    pub fn then_error_matches(self, predicate: impl FnOnce(&A::Error) -> bool)
    where
        A::Event: Debug,
        A::Error: Debug,
    {
        match self.result {
            Ok(events) => panic!("expected an error, but the command produced {events:?}"),
            Err(e) => assert!(predicate(&e), "the error {e:?} does not match"),
        }
    }
}
