//! Sluice's server: the OpenAI-compatible HTTP surface over the engine.
#![forbid(unsafe_code)]

pub mod admin;
pub mod alerts;
pub mod api;
pub mod governor;
pub mod metrics;
pub mod observer;
pub mod qos;
pub mod routes;
pub mod server;
pub mod transport;
pub mod ws;
