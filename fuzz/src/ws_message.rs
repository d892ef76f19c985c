//! Target `ws_message`: one WebSocket text message, parsed as the socket
//! does, its request body then parsed as the pipeline would. Anything
//! refused gets a 4xx and an error message that is JSON naming the right
//! stream; a stream id that starts a stream is within the limit.

use sluice::api::{ClientCommand, parse_client_message};
use sluice::openai::ApiError;

use crate::{check, request};

/// The protocol's longest stream id (`api/ws.rs`, documented there).
const MAX_STREAM_ID_BYTES: usize = 128;

pub fn run(data: &[u8]) {
    // WebSocket text messages are UTF-8: the transport rejects the rest.
    let text = String::from_utf8_lossy(data);
    match parse_client_message(&text) {
        ClientCommand::Refuse { id, error } => {
            check::client_error(&error);
            check::ws_error_message(id.as_deref(), &error);
        }
        ClientCommand::Cancel { id } => {
            let parsed = check::json(text.as_bytes());
            assert_eq!(parsed["type"], "cancel");
            assert_eq!(parsed["id"], id.as_str());
            let unknown = ApiError::invalid("id", format!("No stream '{id}'."));
            check::ws_error_message(Some(&id), &unknown);
        }
        ClientCommand::Start { id, endpoint, body } => {
            let parsed = check::json(text.as_bytes());
            assert_eq!(parsed["type"], "request");
            assert!(
                !id.is_empty() && id.len() <= MAX_STREAM_ID_BYTES,
                "stream id of {} bytes accepted",
                id.len()
            );
            let body = body.to_string();
            if let Err(error) = request::body(endpoint, body.as_bytes()) {
                check::ws_error_message(Some(&id), &error);
            }
        }
    }
}
