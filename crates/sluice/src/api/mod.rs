//! The OpenAI-compatible surface: schema, validation, errors, chunk framing.

pub mod error;
pub mod openai;
pub mod sse;
