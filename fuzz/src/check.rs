//! Invariants several targets share: what an error looks like on the wire.

use serde_json::Value;
use sluice::openai::ApiError;
use sluice::openai::framing::ws_error;

/// A request's fault is a 4xx with OpenAI's error body, and that body is
/// JSON that says the same as the error.
pub fn client_error(error: &ApiError) {
    assert!(
        error.status.is_client_error(),
        "a bad request got status {}: {error:?}",
        error.status
    );
    assert!(!error.message.is_empty(), "empty error message: {error:?}");
    let body = json(error.to_json().as_bytes());
    error_object(&body["error"], error);
    error_object(&json(error.object_json().as_bytes()), error);
}

/// The WebSocket error message for stream `id`: JSON, tagged, the id echoed.
pub fn ws_error_message(id: Option<&str>, error: &ApiError) {
    let message = json(ws_error(id, error).as_bytes());
    assert_eq!(message["type"], "error");
    assert_eq!(message["id"], id.map_or(Value::Null, Value::from));
    error_object(&message["error"], error);
}

fn error_object(object: &Value, error: &ApiError) {
    assert_eq!(object["message"], error.message.as_str());
    assert_eq!(object["type"], error.kind);
    assert_eq!(
        object["param"],
        error.param.as_deref().map_or(Value::Null, Value::from)
    );
    assert_eq!(object["code"], error.code.map_or(Value::Null, Value::from));
}

/// Parses `bytes` as one JSON value, or fails the target with the text.
pub fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|err| {
        panic!(
            "not valid JSON ({err}): {:?}",
            String::from_utf8_lossy(bytes)
        )
    })
}
