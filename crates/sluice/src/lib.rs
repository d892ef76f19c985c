//! Sluice's server: the OpenAI-compatible streaming surface over the
//! engine. Modules in the order of the request path; each depends only on
//! those below it (`app` on all):
//!
//! - `app`: start, reload, shutdown; builds everything below.
//! - `transport`: accept loop, TLS, protocol mode per connection.
//! - `api`: the only module that knows axum: router, auth, thin handlers.
//! - `control`: the one owner of run-time knobs; governor and QoS loops,
//!   alerts.
//! - `writers`: SSE, JSON and WebSocket framing of a generation.
//! - `openai`: schema and validation, chunk framing, the one error mapping.
//! - `pipeline`: register → tokenize → admit → submit → `Generation`.
//! - `telemetry`: per-request observer, Prometheus, QoS and latency windows.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod control;
pub mod openai;
pub mod pipeline;
pub mod telemetry;
pub mod transport;
pub mod writers;
