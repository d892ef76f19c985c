//! Control, beside the request path: the one owner of the run-time knobs,
//! the governor loop (step budget, admission limit), the QoS loop (SLO
//! evaluation, policy actions) and the alerts they raise. The loops read
//! telemetry and act only through the knobs, admission and the engine
//! handle.

pub mod alerts;
pub mod governor;
mod knobs;
pub mod qos;

pub use knobs::{FlagChangeError, KnobValues, ProtocolMode, RuntimeKnobs};
