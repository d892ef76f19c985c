//! One stream's way back to its client, the last stop of the request path:
//! events go into a bounded channel; those it has no room for wait here and
//! park the stream (it skips steps) until the client reads. A client that
//! does not read for `engine.max_park_ms` has its stream ended with a
//! slow-consumer error.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;

use super::{EngineFault, Pool};
use crate::request::{SlowConsumerHook, StreamEvent};

pub(super) enum Delivery {
    Sent,
    Parked,
    ClientGone,
}

/// Places in a stream's channel only the event that ends the stream may
/// take (the channel has one more than `engine.stream_buffer_events`), so
/// a stream ended while parked can still tell its client why.
const LAST_EVENT_PLACES: usize = 1;

/// One stream's way back to its client: its bounded channel, the events the
/// channel had no room for, and since when the client has not made room.
pub(super) struct Outbox {
    events: Sender<StreamEvent>,
    undelivered: VecDeque<StreamEvent>,
    /// Set while events wait: when the client last made room (or, if it
    /// never did since, when the first event had to wait).
    stalled_since: Option<Instant>,
    on_slow_consumer: Option<SlowConsumerHook>,
}

impl Outbox {
    pub(super) fn new(
        events: Sender<StreamEvent>,
        on_slow_consumer: Option<SlowConsumerHook>,
    ) -> Self {
        Self {
            events,
            undelivered: VecDeque::new(),
            stalled_since: None,
            on_slow_consumer,
        }
    }

    pub(super) fn is_parked(&self) -> bool {
        !self.undelivered.is_empty()
    }

    pub(super) fn is_closed(&self) -> bool {
        self.events.is_closed()
    }

    pub(super) fn deliver(&mut self, event: StreamEvent, now: Instant) -> Delivery {
        self.undelivered.push_back(event);
        self.flush(now)
    }

    /// Sends what the channel has room for. A client that took any event
    /// since the last flush restarts the stall clock.
    pub(super) fn flush(&mut self, now: Instant) -> Delivery {
        let waiting = self.undelivered.len();
        let delivery = self.send_waiting();
        match delivery {
            Delivery::Parked => {
                if self.undelivered.len() < waiting || self.stalled_since.is_none() {
                    self.stalled_since = Some(now);
                }
            }
            Delivery::Sent | Delivery::ClientGone => self.stalled_since = None,
        }
        delivery
    }

    fn send_waiting(&mut self) -> Delivery {
        while let Some(event) = self.undelivered.pop_front() {
            // A closed channel is left to `try_send` to report.
            if matches!(event, StreamEvent::Token { .. })
                && self.events.capacity() <= LAST_EVENT_PLACES
                && !self.events.is_closed()
            {
                self.undelivered.push_front(event);
                return Delivery::Parked;
            }
            match self.events.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(event)) => {
                    self.undelivered.push_front(event);
                    return Delivery::Parked;
                }
                Err(TrySendError::Closed(_)) => return Delivery::ClientGone,
            }
        }
        Delivery::Sent
    }

    /// Whether events have waited for the client longer than `limit`.
    pub(super) fn stalled_past(&self, limit: Duration, now: Instant) -> bool {
        self.stalled_since
            .is_some_and(|since| now.saturating_duration_since(since) > limit)
    }

    /// Ends the stream for a client that stopped reading: drops the events
    /// it had no room for and sends the slow-consumer error in the place
    /// kept for the last event (free: nothing that ends a stream was sent).
    pub(super) fn end_stalled(&mut self, limit: Duration) {
        self.end_with(StreamEvent::SlowConsumer { limit });
        if let Some(hook) = self.on_slow_consumer.take() {
            (hook.0)();
        }
    }

    /// Ends the stream with `event`, dropping the events that wait: it takes
    /// the place kept for the last event, free as long as nothing that ends
    /// a stream was sent.
    pub(super) fn end_with(&mut self, event: StreamEvent) {
        self.undelivered.clear();
        self.stalled_since = None;
        // A client gone meanwhile needs no reason.
        let _ = self.events.try_send(event);
    }
}

impl Pool {
    pub(super) fn flush_draining(&mut self, now: Instant) {
        self.draining
            .retain_mut(|drain| matches!(drain.flush(now), Delivery::Parked));
    }

    /// Ends the streams whose client has not read for `engine.max_park_ms`:
    /// a parked sequence frees its slot (its KV stays as a cached prefix, as
    /// for any ended stream), a draining stream is dropped. Each client gets
    /// a slow-consumer error after the events it already has.
    pub(super) fn end_slow_consumers(&mut self, now: Instant) -> Result<(), EngineFault> {
        if self.config.max_park_ms == 0 {
            return Ok(());
        }
        let limit = Duration::from_millis(self.config.max_park_ms);
        let mut ended = 0;
        for slot in 0..self.slots.len() {
            let Some(seq) = self.slots[slot].as_mut() else {
                continue;
            };
            if seq.outbox.stalled_past(limit, now) {
                seq.outbox.end_stalled(limit);
                self.free_slot(slot, true)?;
                ended += 1;
            }
        }
        self.draining.retain_mut(|drain| {
            let stalled = drain.stalled_past(limit, now);
            if stalled {
                drain.end_stalled(limit);
                ended += 1;
            }
            !stalled
        });
        if ended > 0 {
            tracing::info!(
                streams = ended,
                max_park_ms = self.config.max_park_ms,
                "ended streams whose clients stopped reading"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc::{self, Receiver};

    use super::*;
    use crate::request::{EngineTimings, FinishReason, Usage};

    const LIMIT: Duration = Duration::from_millis(1500);
    const BUFFER_EVENTS: usize = 2;

    fn token(text: &str) -> StreamEvent {
        StreamEvent::Token {
            text: text.to_owned(),
            token_ids: vec![1],
        }
    }

    /// An outbox whose channel is sized as `EngineHandle::submit` sizes it.
    fn outbox() -> (Outbox, Receiver<StreamEvent>) {
        let (events, receiver) = mpsc::channel(BUFFER_EVENTS + LAST_EVENT_PLACES);
        (Outbox::new(events, None), receiver)
    }

    /// Fills the buffer, then parks one more token at `at`.
    fn park(outbox: &mut Outbox, at: Instant) {
        for _ in 0..BUFFER_EVENTS {
            assert!(matches!(outbox.deliver(token("a"), at), Delivery::Sent));
        }
        assert!(matches!(outbox.deliver(token("b"), at), Delivery::Parked));
    }

    #[test]
    fn a_client_that_stops_reading_is_stalled_past_the_limit_only_after_it() {
        let (mut outbox, _receiver) = outbox();
        let parked_at = Instant::now();
        assert!(!outbox.stalled_past(LIMIT, parked_at + LIMIT));
        park(&mut outbox, parked_at);
        assert!(outbox.is_parked());
        // Flushes that move nothing keep the clock running.
        let later = parked_at + LIMIT / 2;
        assert!(matches!(outbox.flush(later), Delivery::Parked));
        assert!(!outbox.stalled_past(LIMIT, parked_at + LIMIT));
        assert!(outbox.stalled_past(LIMIT, parked_at + LIMIT + Duration::from_millis(1)));
    }

    #[test]
    fn every_event_the_client_takes_restarts_the_clock() {
        let (mut outbox, mut receiver) = outbox();
        let parked_at = Instant::now();
        park(&mut outbox, parked_at);
        outbox.undelivered.push_back(token("c"));
        // The client takes one event: one waiting event moves, one still waits.
        receiver.try_recv().unwrap();
        let read_at = parked_at + LIMIT;
        assert!(matches!(outbox.flush(read_at), Delivery::Parked));
        assert!(!outbox.stalled_past(LIMIT, parked_at + LIMIT * 2));
        assert!(outbox.stalled_past(LIMIT, read_at + LIMIT + Duration::from_millis(1)));
        // It takes the rest: nothing waits, nothing is stalled.
        receiver.try_recv().unwrap();
        assert!(matches!(outbox.flush(read_at), Delivery::Sent));
        assert!(!outbox.is_parked());
        assert!(!outbox.stalled_past(LIMIT, read_at + LIMIT * 10));
    }

    #[test]
    fn the_event_that_ends_a_stream_takes_the_place_tokens_may_not() {
        let (mut outbox, mut receiver) = outbox();
        let now = Instant::now();
        for _ in 0..BUFFER_EVENTS {
            outbox.deliver(token("a"), now);
        }
        let finished = StreamEvent::Finished {
            reason: FinishReason::Length,
            usage: Usage::default(),
            timings: EngineTimings::default(),
        };
        assert!(matches!(
            outbox.deliver(finished.clone(), now),
            Delivery::Sent
        ));
        for _ in 0..BUFFER_EVENTS {
            assert!(matches!(receiver.try_recv(), Ok(StreamEvent::Token { .. })));
        }
        assert_eq!(receiver.try_recv().unwrap(), finished);
    }

    #[test]
    fn a_stalled_stream_ends_with_a_slow_consumer_error_after_what_the_client_has() {
        let (mut outbox, mut receiver) = outbox();
        park(&mut outbox, Instant::now());
        outbox.end_stalled(LIMIT);
        assert!(!outbox.is_parked());
        drop(outbox);
        let mut received = Vec::new();
        while let Ok(event) = receiver.try_recv() {
            received.push(event);
        }
        let mut expected = vec![token("a"); BUFFER_EVENTS];
        expected.push(StreamEvent::SlowConsumer { limit: LIMIT });
        assert_eq!(received, expected, "the parked token is dropped");
        assert!(receiver.is_closed());
    }

    #[test]
    fn a_client_gone_is_reported_even_while_parked() {
        let (mut outbox, receiver) = outbox();
        let now = Instant::now();
        park(&mut outbox, now);
        drop(receiver);
        assert!(matches!(outbox.flush(now), Delivery::ClientGone));
        assert!(!outbox.stalled_past(LIMIT, now + LIMIT * 2));
    }
}
