//! Telemetry, beneath the pipeline: each request's observer feeds the
//! Prometheus series, the QoS evaluator's window and the governor's latency
//! windows; the control loops read them.

mod groups;
mod kv_events;
mod latency;
mod metrics;
mod observer;
mod qos_window;

pub use groups::{AlertMetrics, ConnectionMetrics};
pub use kv_events::start_kv_event_publisher;
pub use latency::LatencyWindows;
pub use metrics::{EngineView, Metrics, QuotaMode, RejectedBy};
pub use observer::{Outcome, RequestInfo, RequestObserver};
