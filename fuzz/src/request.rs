//! Target `request`: a request body, parsed and validated for both
//! endpoints as the HTTP handlers do. It is accepted with every value in
//! range, or refused with a 4xx whose JSON body parses.

use std::time::Instant;

use serde_json::Value;
use sluice::openai::ApiError;
use sluice::openai::request::parse_request;
use sluice::pipeline::{Endpoint, Prompt, Request};
use sluice_core::config::ServerConfig;

use crate::check;

/// The model the server under test serves (the seeds name it).
pub const MODEL: &str = "m";

pub fn run(data: &[u8]) {
    for endpoint in [Endpoint::Chat, Endpoint::Completion] {
        let _ = body(endpoint, data);
    }
}

/// One body for one endpoint; the WebSocket target reuses it.
pub fn body(endpoint: Endpoint, data: &[u8]) -> Result<Request, ApiError> {
    let limits = ServerConfig::default();
    let parsed = parse_request(endpoint, data, MODEL, &limits, Instant::now());
    match &parsed {
        Ok(request) => accepted(endpoint, data, request, &limits),
        Err(error) => check::client_error(error),
    }
    parsed
}

fn accepted(endpoint: Endpoint, data: &[u8], request: &Request, limits: &ServerConfig) {
    let json = check::json(data);
    assert_eq!(json["model"], MODEL, "accepted another model");
    let params = &request.params;
    assert!(params.stop.len() <= limits.max_stop_sequences);
    assert!(params.stop.iter().all(|s| s.len() <= limits.max_stop_bytes));
    assert!(params.max_tokens.is_none_or(|max| max >= 1));
    if !params.stream {
        assert!(!params.include_usage, "usage chunk without streaming");
    }
    let sampling = &params.sampling;
    in_range("temperature", sampling.temperature, 0.0, 2.0);
    in_range("top_p", sampling.top_p, 0.0, 1.0);
    assert!(sampling.top_p > 0.0, "top_p 0 accepted");
    in_range("min_p", sampling.min_p, 0.0, 1.0);
    in_range("presence_penalty", sampling.presence_penalty, -2.0, 2.0);
    in_range("frequency_penalty", sampling.frequency_penalty, -2.0, 2.0);
    in_range("repetition_penalty", sampling.repetition_penalty, 0.01, 2.0);
    assert!(sampling.top_k >= 0, "top_k {}", sampling.top_k);
    match (&request.prompt, endpoint) {
        (Prompt::Chat(messages), Endpoint::Chat) => {
            assert!(!messages.is_empty(), "no messages");
            for message in messages {
                assert!(
                    ["system", "user", "assistant", "tool"].contains(&message.role.as_str()),
                    "role {:?}",
                    message.role
                );
            }
            assert_eq!(
                json["messages"].as_array().map(Vec::len),
                Some(messages.len())
            );
        }
        (Prompt::Text(prompt), Endpoint::Completion) => {
            assert!(!prompt.is_empty(), "empty prompt");
            let sent = match &json["prompt"] {
                Value::Array(prompts) => &prompts[0],
                one => one,
            };
            assert_eq!(sent, prompt.as_str());
        }
        _ => panic!("the prompt is of the other endpoint's kind"),
    }
}

fn in_range(param: &str, value: f32, min: f32, max: f32) {
    assert!(
        (min..=max).contains(&value),
        "{param} = {value} accepted, outside {min}..={max}"
    );
}
