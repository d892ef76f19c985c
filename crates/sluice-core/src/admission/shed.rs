//! Deadline-aware shedding, decided when a request asks for admission: can
//! it have its first token within its deadline? The prediction is its place
//! in the queue over the rate the queue drains (permits released per
//! second, measured), plus the time an admitted stream takes to its first
//! token (the governor's window). A request that would miss is told at
//! once, with a `Retry-After` from the same prediction: the time until the
//! queue ahead of it has drained and the places already booked have come
//! back, one drain interval after the last of them.
//!
//! The drain rate counts admissions, not releases: a place opens when a
//! stream ends or when the governor's prompt gate lets another prompt in,
//! and while the engine fills (a cold start, a burst) the gate opens
//! places long before the first stream ends. Counted on releases, the
//! first 20 s of an overload had no measured rate and queued everything.
//!
//! That advice is a booking. The rejected request's place is held for it
//! (keyed by tenant and request content) from the advised time for a
//! grace period, and counts as queued for every other arrival meanwhile,
//! so when the client comes back as told, its place is there: it queues
//! ahead of every request that joined the queue after it was booked. Without
//! the booking, under sustained overload the queue would be full again by
//! then and the advice would be a lottery. Bookings are a calendar: each is
//! due one drain interval after the latest held, so retries come back no
//! faster than the queue drains. Counted as places
//! ahead instead, a due date moved earlier whenever bookings were claimed
//! faster than the pace, dates piled onto the same seconds, and the
//! retries due together waited for each other: booked retries' TTFT p95
//! 13.1 s against first attempts' 7.6 s, admission waits up to 12.8 s
//! (benchmarks/results/2026-12-06-dea4699753ff-overload, 1.5x load).
//! Bookings are bounded in count and in horizon ([`MAX_RETRY_AFTER`]);
//! past the horizon the answer is the horizon, unbooked.
//!
//! The rate the rule counts on is the slower of the last 20 s and the last
//! minute ([`DrainRate::sustained_per_second`]). Its advice is a promise
//! about the next minute, and 20 s hold only a handful of admissions at
//! this load: counted on them alone, a burst of admissions (the governor
//! raising its limit) read as a rate twice what the queue then drained
//! at, and the retries booked on it came back to wait 15-24 s
//! (benchmarks/results/2026-12-06-4f5605e7b032-overload, 2x load).
//!
//! Pure: the caller passes the time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::window::expire;

/// How far back admissions count towards the drain rate: long enough to
/// hold several at this machine's few per second, short enough
/// to follow a change of load within a governor window or two.
pub const DRAIN_WINDOW: Duration = Duration::from_secs(20);
/// The longer window the shedding rule also reads (module docs).
pub const SUSTAINED_WINDOW: Duration = Duration::from_secs(60);
/// Admissions the window needs before its rate is trusted; with fewer (a
/// cold start) nothing is shed for a prediction.
pub const MIN_ADMISSIONS: usize = 4;
pub const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);
/// The furthest a booking reaches: past it, a client is told to come back
/// then, without a held place. Five minutes, so an overload of twice the
/// capacity that lasts five minutes books every request it sheds. At 60 s,
/// 118 of the 248 shed in such a run were told 60 s without a place and 86
/// of their retries were shed again
/// (benchmarks/results/2026-12-07-058ba6188375-overload, 2x).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// How long after its time a booking waits for its client.
pub const BOOKING_GRACE: Duration = Duration::from_secs(10);
/// How early before its time a booking is honoured (clients round
/// `Retry-After` and clocks differ).
pub const BOOKING_EARLY: Duration = Duration::from_secs(2);
/// Most bookings held at once.
pub const MAX_BOOKINGS: usize = 1024;
/// The share of the rate streams end at that the calendar books: a
/// promise minutes ahead is kept only if places open at least that fast
/// then. Booked at the rate, retries came back as fast as streams ended,
/// the queue of booked retries grew over the run and their first tokens
/// came 12-16 s after their return (1.5x load); rounded-up dates had
/// booked at ~0.78 of the rate and every retry met the SLO
/// (benchmarks/results/2026-12-07-f25b6ce2b7f7-overload).
pub const CALENDAR_SHARE: f64 = 0.9;
/// How far back stream ends count towards the calendar's pace. Its
/// promises reach minutes ahead; over one minute, the streams a cold
/// burst admitted together, ending together, read as a rate the engine
/// did not keep, and at 2x the retries booked on it queued 8-14 s
/// (benchmarks/results/2026-12-07-b3751b5ac3eb-overload).
pub const CALENDAR_WINDOW: Duration = Duration::from_secs(120);

/// Admissions per second over [`DRAIN_WINDOW`] and [`SUSTAINED_WINDOW`]:
/// one queue of admission times per window, so each read and each record
/// costs O(1) amortised whatever the admission rate.
/// Also the streams that ended over [`CALENDAR_WINDOW`], for the
/// calendar ([`Self::calendar_per_second`]).
#[derive(Debug, Default)]
pub struct DrainRate {
    recent: VecDeque<Instant>,
    sustained: VecDeque<Instant>,
    ended: VecDeque<Instant>,
}

/// Events in `times` per second over `window`, counted from the oldest
/// when that is younger, over no less than [`DRAIN_WINDOW`].
fn rate_over(times: &VecDeque<Instant>, now: Instant, window: Duration) -> Option<f64> {
    let oldest = *times.front()?;
    let span = now
        .saturating_duration_since(oldest)
        .clamp(DRAIN_WINDOW, window);
    Some(times.len() as f64 / span.as_secs_f64())
}

impl DrainRate {
    pub fn record(&mut self, now: Instant) {
        self.recent.push_back(now);
        self.sustained.push_back(now);
        self.expire(now);
    }

    /// A stream ended: its place opened.
    pub fn record_end(&mut self, now: Instant) {
        self.ended.push_back(now);
        self.expire(now);
    }

    fn expire(&mut self, now: Instant) {
        expire(&mut self.recent, now, DRAIN_WINDOW);
        expire(&mut self.sustained, now, SUSTAINED_WINDOW);
        expire(&mut self.ended, now, CALENDAR_WINDOW);
    }

    /// The pace the calendar books at: [`CALENDAR_SHARE`] of the rate
    /// streams ended over [`CALENDAR_WINDOW`], once [`MIN_ADMISSIONS`]
    /// did; before that (a cold start) of [`Self::sustained_per_second`].
    /// Ends, not admissions: a place promised minutes ahead opens when a
    /// stream ends. Admissions also count the prompt gate filling the
    /// engine and booked retries passing the limit: at 1.5x, 103 admissions
    /// against 98 ends from 150 s to 300 s, and the retries booked on them
    /// queued longer the later they came.
    pub fn calendar_per_second(&mut self, now: Instant) -> Option<f64> {
        self.expire(now);
        let rate = if self.ended.len() >= MIN_ADMISSIONS {
            rate_over(&self.ended, now, CALENDAR_WINDOW)
        } else {
            self.sustained_per_second(now)
        };
        rate.map(|rate| rate * CALENDAR_SHARE)
    }

    /// Admissions per second over [`DRAIN_WINDOW`]; None until it holds
    /// [`MIN_ADMISSIONS`]. Over the whole window, not from its first
    /// admission: a queue that drained slowly for a while drains slowly.
    pub fn per_second(&mut self, now: Instant) -> Option<f64> {
        self.expire(now);
        let recent = self.recent.len();
        (recent >= MIN_ADMISSIONS).then(|| recent as f64 / DRAIN_WINDOW.as_secs_f64())
    }

    /// The slower of [`Self::per_second`] and the rate over
    /// [`SUSTAINED_WINDOW`], the latter counted from the oldest admission
    /// it holds when that is younger (a load that began less than a minute
    /// ago), but over no less than [`DRAIN_WINDOW`].
    pub fn sustained_per_second(&mut self, now: Instant) -> Option<f64> {
        let recent = self.per_second(now)?;
        Some(recent.min(rate_over(&self.sustained, now, SUSTAINED_WINDOW)?))
    }
}

#[derive(Debug, Clone, Copy)]
struct Booking {
    key: u64,
    due: Instant,
    /// The queue position it holds: it goes ahead of waiters numbered
    /// from here on (those that queued after it was booked).
    place: u64,
}

/// Places held for rejected requests until their advised time (plus grace).
#[derive(Debug, Default)]
pub struct Bookings {
    held: VecDeque<Booking>,
}

impl Bookings {
    fn expire(&mut self, now: Instant) {
        self.held
            .retain(|booking| now.saturating_duration_since(booking.due) <= BOOKING_GRACE);
    }

    /// Bookings still held, but for `key`'s own: how many fall due within
    /// `within` from now, and when the latest of them all is due.
    pub fn held_for_others(&mut self, key: u64, now: Instant, within: Duration) -> HeldForOthers {
        self.expire(now);
        let others = || self.held.iter().filter(|booking| booking.key != key);
        HeldForOthers {
            count: others()
                .filter(|booking| booking.due <= now + within)
                .count(),
            latest_due_in: others()
                .map(|booking| booking.due.saturating_duration_since(now))
                .max(),
        }
    }

    /// Bookings held for places before queue number `place`.
    pub fn held_before(&mut self, place: u64, now: Instant) -> usize {
        self.expire(now);
        self.held
            .iter()
            .filter(|booking| booking.place < place)
            .count()
    }

    /// Takes `key`'s booking if it is due (or nearly) and returns the place
    /// it holds: the request queues there, without a prediction.
    pub fn claim(&mut self, key: u64, now: Instant) -> Option<u64> {
        self.expire(now);
        let due = self
            .held
            .iter()
            .position(|booking| booking.key == key && booking.due <= now + BOOKING_EARLY);
        due.and_then(|index| self.held.remove(index))
            .map(|booking| booking.place)
    }

    /// Holds `place` in the queue for `key` at `due`, replacing an earlier
    /// booking of the same key; false when the book is full.
    pub fn book(&mut self, key: u64, due: Instant, place: u64, now: Instant) -> bool {
        self.expire(now);
        self.held.retain(|booking| booking.key != key);
        if self.held.len() >= MAX_BOOKINGS {
            return false;
        }
        self.held.push_back(Booking { key, due, place });
        true
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// The bookings held for other requests, as an arrival sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HeldForOthers {
    /// Those due before the arrival's first token must come: they take
    /// places before it. One due later takes a place after it if it is
    /// admitted in time; counted, a calendar minutes long would turn away
    /// every arrival while its bookings come due one by one.
    pub count: usize,
    /// From now until the latest of them is due; None when none is held.
    pub latest_due_in: Option<Duration>,
}

/// What the shedding rule sees of one arrival.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// Whether it must wait: no permit free for its class, or others of
    /// its class (or above) queued first.
    pub must_wait: bool,
    /// Requests queued ahead of it.
    pub queued_ahead: usize,
    /// Places booked for others: they too are admitted before it.
    pub booked: HeldForOthers,
    /// Permits released per second, when measured.
    pub drain_per_second: Option<f64>,
    /// The bookings' pace ([`DrainRate::calendar_per_second`]); the
    /// drain rate when None.
    pub calendar_per_second: Option<f64>,
    /// Admission to first token, as the governor last measured it.
    pub service: Duration,
    /// Longest it may take to its first token; None: no deadline.
    pub deadline: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// It queues (or runs at once); the wait predicted when one could be.
    Queue { predicted_wait: Option<Duration> },
    /// It would miss its deadline: turned away, told when to come back.
    Shed {
        predicted_wait: Duration,
        /// Whole seconds, as `Retry-After` carries them.
        retry_after: Duration,
        /// When its place on the calendar comes, from now, to the
        /// fraction of a second; None past the booking horizon.
        place_in: Option<Duration>,
    },
}

/// The shedding rule (module docs).
pub fn decide(arrival: &Arrival) -> Verdict {
    if !arrival.must_wait {
        return Verdict::Queue {
            predicted_wait: Some(Duration::ZERO),
        };
    }
    let Some(rate) = arrival.drain_per_second.filter(|rate| *rate > 0.0) else {
        return Verdict::Queue {
            predicted_wait: None,
        };
    };
    let ahead = arrival.queued_ahead + arrival.booked.count;
    let wait = (ahead as f64 + 1.0) / rate;
    let predicted_wait = Duration::from_secs_f64(wait);
    let Some(deadline) = arrival.deadline else {
        return Verdict::Queue {
            predicted_wait: Some(predicted_wait),
        };
    };
    let room = deadline.as_secs_f64() - arrival.service.as_secs_f64();
    if wait <= room {
        return Verdict::Queue {
            predicted_wait: Some(predicted_wait),
        };
    }
    // Back when every place ahead has drained: its first token then takes
    // the service time alone. Advised back when its place just met the
    // deadline, a retry waited up to the whole room again and its first token
    // came at the deadline plus the service time's spread: booked retries'
    // TTFT p95 11.7 s against a 10 s SLO, first attempts 8.2 s
    // (benchmarks/results/2026-12-06-e9f221286bcf-overload, 2x load).
    // Places ahead are the queue and the calendar of bookings, one
    // interval past its latest date (module docs), at the measured rate.
    // Counted at 0.8 of it, in a closed loop where every place that opened
    // went to a booked client, places opened faster than clients came back:
    // at 75 streams the engine ran 39-48 decodes where the governor's limit
    // allowed 56-66, output 3.8 % under the governor off's
    // (benchmarks/results/2026-12-07-858d5af9c555-overload-closed-fixed-length;
    // at the rate, -88308640c5aa-...-pace1: 7.8 % over it).
    let queue_drained = arrival.queued_ahead as f64 / rate;
    let pace = arrival
        .calendar_per_second
        .filter(|pace| *pace > 0.0)
        .unwrap_or(rate);
    let after_bookings = arrival
        .booked
        .latest_due_in
        .map_or(0.0, |due_in| due_in.as_secs_f64() + 1.0 / pace);
    let (retry_after, place_in) = advice(queue_drained.max(after_bookings));
    Verdict::Shed {
        predicted_wait,
        retry_after,
        place_in,
    }
}

/// `Retry-After` for a place `seconds` from now (whole seconds, rounded
/// up), and the place's exact time when it is within the horizon. The
/// place itself is not rounded: each booking is due one drain interval
/// after the latest, and rounding each up to a whole second spaced them
/// half a second wider on average: at 2x, 13-14 bookings fell due per 30 s
/// where 17-23 places opened, the engine ran 19-27 streams after the
/// arrivals stopped, and 50 of 312 refusals fell past the horizon
/// (benchmarks/results/2026-12-07-2f5bec42d4fb-overload-pair-horizon300).
pub fn advice(seconds: f64) -> (Duration, Option<Duration>) {
    // Sums of drain intervals land a hair past whole seconds they equal.
    let whole = (seconds - 1e-6).ceil();
    let retry_after = Duration::from_secs_f64(whole).clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER);
    let place_in =
        (whole <= MAX_RETRY_AFTER.as_secs_f64()).then(|| Duration::from_secs_f64(seconds.max(0.0)));
    (retry_after, place_in)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(queued_ahead: usize, rate: f64, deadline_s: u64) -> Arrival {
        Arrival {
            must_wait: true,
            queued_ahead,
            booked: HeldForOthers::default(),
            drain_per_second: Some(rate),
            calendar_per_second: None,
            service: Duration::from_secs(2),
            deadline: Some(Duration::from_secs(deadline_s)),
        }
    }

    #[test]
    fn a_request_whose_predicted_first_token_meets_its_deadline_queues() {
        // 0.5 releases/s, 2 s to a first token once admitted, deadline 10 s:
        // places ahead up to 3 wait (4 / 0.5 =) 8 s and meet it.
        let verdict = decide(&arrival(3, 0.5, 10));
        assert_eq!(
            verdict,
            Verdict::Queue {
                predicted_wait: Some(Duration::from_secs(8))
            }
        );
    }

    #[test]
    fn one_that_would_miss_is_shed_with_the_time_the_queue_ahead_drains() {
        // 9 ahead: 20 s wait, 8 s of room. All 9 drain first, at 0.5/s:
        // 18 s.
        let verdict = decide(&arrival(9, 0.5, 10));
        assert_eq!(
            verdict,
            Verdict::Shed {
                predicted_wait: Duration::from_secs(20),
                retry_after: Duration::from_secs(18),
                place_in: Some(Duration::from_secs(18)),
            }
        );
        // Coming back with the queue drained, it is next.
        assert_eq!(
            decide(&arrival(0, 0.5, 10)),
            Verdict::Queue {
                predicted_wait: Some(Duration::from_secs(2))
            }
        );
    }

    #[test]
    fn a_shed_request_is_booked_one_drain_interval_after_the_latest_booking() {
        // 2 queued and 3 booked, the latest due in 20 s: (2 + 3 + 1) / 0.5
        // = 12 s of wait, 8 s of room. A place opens every 2 s: due 22 s
        // from now, after that booking, not at (2 + 3) / 0.5 = 10 s, among
        // the retries already due then.
        let booked = Arrival {
            booked: HeldForOthers {
                count: 3,
                latest_due_in: Some(Duration::from_secs(20)),
            },
            ..arrival(2, 0.5, 10)
        };
        assert_eq!(
            decide(&booked),
            Verdict::Shed {
                predicted_wait: Duration::from_secs(12),
                retry_after: Duration::from_secs(22),
                place_in: Some(Duration::from_secs(22)),
            }
        );
        // Bookings due before the queue has drained leave the queue's time.
        let soon = Arrival {
            booked: HeldForOthers {
                count: 1,
                latest_due_in: Some(Duration::from_secs(1)),
            },
            ..arrival(9, 0.5, 10)
        };
        assert!(matches!(
            decide(&soon),
            Verdict::Shed { retry_after, .. } if retry_after == Duration::from_secs(18)
        ));
    }

    #[test]
    fn successive_bookings_fall_due_one_drain_interval_apart_not_whole_seconds() {
        // A place opens every 1 / 0.6 = 1.67 s; five queued ahead drain in
        // 8.33 s. Twelve refusals in a row, each booked after the latest.
        let mut latest_due_in = None;
        let mut advice = Vec::new();
        for count in 0..12 {
            let verdict = decide(&Arrival {
                booked: HeldForOthers {
                    count,
                    latest_due_in,
                },
                ..arrival(5, 0.6, 10)
            });
            let Verdict::Shed {
                retry_after,
                place_in,
                ..
            } = verdict
            else {
                panic!("{verdict:?}");
            };
            latest_due_in = place_in;
            advice.push(retry_after.as_secs());
        }
        // The twelfth is due 8.33 + 11 x 1.67 = 26.67 s from now, at the
        // rate places open; rounded up at each booking it was 31 s.
        let last = latest_due_in.unwrap().as_secs_f64();
        assert!((last - 8.0 / 0.6 * 2.0).abs() < 1e-6, "{last}");
        assert_eq!(advice, [9, 10, 12, 14, 15, 17, 19, 20, 22, 24, 25, 27]);
    }

    #[test]
    fn no_wait_no_measurement_or_no_deadline_sheds_nothing() {
        let free = Arrival {
            must_wait: false,
            ..arrival(100, 0.5, 1)
        };
        assert_eq!(
            decide(&free),
            Verdict::Queue {
                predicted_wait: Some(Duration::ZERO)
            }
        );
        let cold = Arrival {
            drain_per_second: None,
            ..arrival(100, 0.5, 1)
        };
        assert_eq!(
            decide(&cold),
            Verdict::Queue {
                predicted_wait: None
            }
        );
        let batch = Arrival {
            deadline: None,
            ..arrival(100, 0.5, 1)
        };
        assert!(matches!(decide(&batch), Verdict::Queue { .. }));
    }

    #[test]
    fn past_the_horizon_the_advice_is_the_horizon_unbooked() {
        let verdict = decide(&arrival(200, 0.5, 10));
        assert_eq!(
            verdict,
            Verdict::Shed {
                predicted_wait: Duration::from_secs(402),
                retry_after: MAX_RETRY_AFTER,
                place_in: None,
            }
        );
    }

    #[test]
    fn the_drain_rate_counts_admissions_of_the_window_once_there_are_enough() {
        let start = Instant::now();
        let mut drain = DrainRate::default();
        for second in 0..3 {
            drain.record(start + Duration::from_secs(second));
        }
        assert_eq!(drain.per_second(start + Duration::from_secs(3)), None);
        for second in 3..10 {
            drain.record(start + Duration::from_secs(second));
        }
        assert_eq!(drain.per_second(start + Duration::from_secs(10)), Some(0.5));
        // Thirty seconds later the window is empty again.
        assert_eq!(drain.per_second(start + Duration::from_secs(40)), None);
    }

    #[test]
    fn a_burst_of_admissions_counts_at_the_minutes_rate_not_the_last_20_s() {
        let start = Instant::now();
        let mut drain = DrainRate::default();
        // One every 4 s for a minute (0.25/s), then ten in the last 3 s.
        for second in (0..60).step_by(4) {
            drain.record(start + Duration::from_secs(second));
        }
        for tenth in 0..10 {
            drain.record(start + Duration::from_millis(57_000 + tenth * 300));
        }
        let now = start + Duration::from_secs(60);
        // 20 s: five of the steady pace (40 s to 56 s) and the ten, 15 / 20.
        assert_eq!(drain.per_second(now), Some(0.75));
        // The minute: all 25 over 60 s.
        let sustained = drain.sustained_per_second(now).unwrap();
        assert!((sustained - 25.0 / 60.0).abs() < 1e-9, "{sustained}");
    }

    #[test]
    fn a_load_younger_than_a_minute_counts_over_its_age_at_least_the_short_window() {
        let start = Instant::now();
        let mut drain = DrainRate::default();
        for second in 0..30 {
            drain.record(start + Duration::from_secs(second));
        }
        let now = start + Duration::from_secs(30);
        // 20 s: 20 admissions, 1/s; its 30 s of age: 30 / 30, also 1/s.
        assert_eq!(drain.per_second(now), Some(1.0));
        assert_eq!(drain.sustained_per_second(now), Some(1.0));
        // Faster for the last 20 s: the age-long rate is the slower.
        for tenth in 0..10 {
            drain.record(now + Duration::from_millis(tenth * 100));
        }
        let later = now + Duration::from_secs(1);
        // 20 s: 19 of the steady pace (11 s to 29 s) and the ten.
        assert_eq!(drain.per_second(later), Some(1.45));
        let sustained = drain.sustained_per_second(later).unwrap();
        assert!((sustained - 40.0 / 31.0).abs() < 1e-9, "{sustained}");
    }

    #[test]
    fn the_calendar_paces_at_a_share_of_the_rate_streams_end_once_enough_have() {
        let start = Instant::now();
        let at = |millis| start + Duration::from_millis(millis);
        let mut drain = DrainRate::default();
        // A cold start: 30 admissions in 30 s, and three streams ended,
        // too few to count on.
        for second in 0..30 {
            drain.record(at(second * 1000));
        }
        for millis in [27_000, 28_000, 29_000] {
            drain.record_end(at(millis));
        }
        let now = at(30_000);
        assert_eq!(drain.sustained_per_second(now), Some(1.0));
        assert_eq!(drain.calendar_per_second(now), Some(0.9));
        // Four are enough: over the 20 s floor of the window, 0.2 per
        // second, while admissions still read 1 per second.
        drain.record_end(at(29_500));
        let pace = drain.calendar_per_second(now).unwrap();
        assert!((pace - 0.9 * 0.2).abs() < 1e-9, "{pace}");
        // Ends count for two minutes: 70 s on, the four over the 73 s
        // since the first of them.
        let pace = drain.calendar_per_second(at(100_000)).unwrap();
        assert!((pace - 0.9 * 4.0 / 73.0).abs() < 1e-9, "{pace}");
    }

    #[test]
    fn only_bookings_due_within_the_window_count_but_the_latest_is_the_latest_of_all() {
        let now = Instant::now();
        let mut bookings = Bookings::default();
        for (key, due) in [(1, 5), (2, 20), (3, 40)] {
            assert!(bookings.book(key, now + Duration::from_secs(due), key, now));
        }
        assert_eq!(
            bookings.held_for_others(9, now, Duration::from_secs(10)),
            HeldForOthers {
                count: 1,
                latest_due_in: Some(Duration::from_secs(40))
            }
        );
    }

    #[test]
    fn a_booking_is_claimed_by_its_key_when_due_and_lapses_after_its_grace() {
        let now = Instant::now();
        let mut bookings = Bookings::default();
        assert!(bookings.book(7, now + Duration::from_secs(12), 40, now));
        assert!(bookings.book(8, now + Duration::from_secs(13), 41, now));
        assert_eq!(
            bookings.held_for_others(7, now, MAX_RETRY_AFTER),
            HeldForOthers {
                count: 1,
                latest_due_in: Some(Duration::from_secs(13))
            }
        );
        assert_eq!(bookings.claim(7, now), None, "too early");
        assert_eq!(
            bookings.claim(9, now + Duration::from_secs(12)),
            None,
            "no such key"
        );
        assert_eq!(bookings.claim(7, now + Duration::from_secs(11)), Some(40));
        assert_eq!(
            bookings.claim(7, now + Duration::from_secs(12)),
            None,
            "claimed once"
        );
        assert_eq!(bookings.len(), 1);
        assert_eq!(
            bookings.held_for_others(0, now + Duration::from_secs(24), MAX_RETRY_AFTER),
            HeldForOthers::default(),
            "lapsed 10 s after its time"
        );
    }
}
