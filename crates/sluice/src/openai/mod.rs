//! The OpenAI protocol over the pipeline: the request schema and its
//! validation (into `pipeline::Request`), the chunk framing every writer
//! uses, and the one mapping from pipeline errors to HTTP statuses and
//! OpenAI error bodies. No axum here: the API layer turns these into
//! responses.

pub mod error;
pub mod framing;
pub mod request;

pub use error::ApiError;
