//! What the registry records of a stream: its stage, how it ended, its
//! transport, and the one-byte state code the record's atomic holds.

/// A fieldless enum with `ALL` (every variant, in order) and `as_str` (its
/// metric label), each variant named once so the lists cannot drift.
macro_rules! labelled_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident [$count:ident] {
            $($(#[$variant_meta:meta])* $variant:ident => $label:literal,)+
        }
    ) => {
        $(#[$meta])*
        pub enum $name {
            $($(#[$variant_meta])* $variant,)+
        }

        pub(super) const $count: usize = [$($label),+].len();

        impl $name {
            pub const ALL: [Self; $count] = [$(Self::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $label,)+
                }
            }
        }
    };
}

labelled_enum! {
    /// Where a live stream is in its lifecycle; stages only move forward.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum Stage [STAGES] {
        /// Arrived; not yet asking for admission.
        Registered => "registered",
        /// Waiting in the admission queue.
        Queued => "queued",
        /// Holds an admission permit.
        Admitted => "admitted",
        /// Submitted to the engine, no token written yet.
        Prefilling => "prefilling",
        /// At least one token written to the client.
        Streaming => "streaming",
    }
}

labelled_enum! {
    /// How a stream ended.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum EndReason [END_REASONS] {
        /// The generation finished (stop, length, or a cached whole answer).
        Completed => "completed",
        /// The client asked to stop it (a WebSocket `cancel`).
        Cancelled => "cancelled",
        /// The client went away: connection closed, request dropped.
        Disconnected => "disconnected",
        /// It waited for admission longer than `admission.max_wait_ms`.
        TimedOut => "timed_out",
        /// The engine failed it.
        Failed => "failed",
        /// Turned away before it ran: invalid, too long, or over capacity.
        Rejected => "rejected",
        /// The server shut down.
        Shutdown => "shutdown",
        /// Its client did not read it for `engine.max_park_ms`, or read
        /// slower than `server.limits.min_read_bytes_per_second`.
        SlowConsumer => "slow_consumer",
        /// It ran past `server.limits.max_stream_seconds`.
        Expired => "expired",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    Live(Stage),
    Ended(EndReason),
}

impl StreamState {
    /// Stages encode below every end, in order, so "forward" is `>` on codes.
    pub(super) fn encode(self) -> u8 {
        match self {
            Self::Live(stage) => stage as u8,
            Self::Ended(reason) => STAGES as u8 + reason as u8,
        }
    }

    pub(super) fn decode(code: u8) -> Self {
        let code = usize::from(code);
        if code < STAGES {
            Self::Live(Stage::ALL[code])
        } else {
            Self::Ended(EndReason::ALL[code - STAGES])
        }
    }
}

/// The transport a stream's client is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    Http2,
    WebSocket,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "h1",
            Self::Http2 => "h2",
            Self::WebSocket => "ws",
        }
    }
}
