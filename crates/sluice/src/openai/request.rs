//! OpenAI request schema and its validation, into the pipeline's
//! [`Request`]. Unknown fields are ignored, as OpenAI's own server does;
//! known fields are range-checked and every failure names the parameter.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use sluice_core::admission::Priority;
use sluice_core::config::ServerConfig;
use sluice_engine::{ChatMessage, SamplingParams};

use super::error::ApiError;
use crate::pipeline::{Endpoint, GenerationParams, Prompt, Request};

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields shared by chat and text completions.
#[derive(Debug, Deserialize)]
pub struct CommonParams {
    pub model: String,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    pub seed: Option<i64>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub stop: Option<OneOrMany>,
    /// vLLM's extension: generate past end-of-generation tokens.
    #[serde(default)]
    pub ignore_eos: bool,
    /// vLLM's extension: requests share cached prompt KV only with the same
    /// salt (and tenant), so a client can keep its prompts to itself.
    pub cache_salt: Option<String>,
    /// vLLM's extension: an integer, lower first (above 0 is Sluice's
    /// `batch` class), or Sluice's class name, "interactive" or "batch".
    pub priority: Option<Value>,
    /// Sluice's extension: the longest this request may wait for its first
    /// token before it is better refused (its TTFT deadline).
    pub ttft_deadline_ms: Option<i64>,
    pub n: Option<i64>,
    pub logprobs: Option<Value>,
    pub best_of: Option<i64>,
    pub echo: Option<bool>,
    pub tools: Option<Value>,
    pub response_format: Option<Value>,
}

/// Chat-only fields; the shared ones are read separately into
/// [`CommonParams`] (serde's `flatten` would lose the path of a bad field).
#[derive(Debug, Deserialize)]
struct ChatFields {
    messages: Vec<RawMessage>,
}

#[derive(Debug)]
pub struct ChatCompletionRequest {
    pub messages: Vec<RawMessage>,
    pub common: CommonParams,
}

#[derive(Debug, Deserialize)]
pub struct RawMessage {
    pub role: String,
    pub content: Option<MessageContent>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CompletionFields {
    prompt: Option<OneOrMany>,
}

#[derive(Debug)]
pub struct CompletionRequest {
    pub prompt: Option<OneOrMany>,
    pub common: CommonParams,
}

/// Parses a request body into a JSON object.
pub fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|err| {
        ApiError::bad_request(format!("The request body is not valid JSON: {err}"))
    })?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "The request body must be a JSON object.",
        ));
    }
    Ok(value)
}

/// Reads typed fields out of a parsed body; the error names the field at fault.
pub fn from_value<'de, T: Deserialize<'de>>(value: &'de Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let message = err.into_inner().to_string();
        if let Some(field) = missing_field(&message) {
            let param = if path == "." {
                field.to_owned()
            } else {
                format!("{path}.{field}")
            };
            ApiError::invalid(param.clone(), format!("'{param}' is required."))
        } else if path == "." {
            ApiError::bad_request(format!("The request body is invalid: {message}"))
        } else {
            ApiError::invalid(
                path.clone(),
                format!("Invalid value for '{path}': {message}"),
            )
        }
    })
}

/// serde reports a missing field only in its message: "missing field `x`".
fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

fn check_range(param: &str, value: Option<f32>, min: f32, max: f32) -> Result<(), ApiError> {
    match value {
        Some(v) if !(min..=max).contains(&v) || v.is_nan() => Err(ApiError::invalid(
            param,
            format!("'{param}' must be between {min} and {max}, got {v}."),
        )),
        _ => Ok(()),
    }
}

fn unsupported(param: &str, why: &str) -> ApiError {
    ApiError::invalid(
        param,
        format!("'{param}' is not supported by this server: {why}."),
    )
}

impl CommonParams {
    pub fn validate(
        &self,
        served_model: &str,
        limits: &ServerConfig,
        arrived_at: Instant,
    ) -> Result<GenerationParams, ApiError> {
        self.check_model(served_model)?;
        self.check_sampling()?;
        let max_tokens = self.max_tokens()?;
        self.check_unsupported()?;
        let stop = self.stop_sequences(limits)?;
        self.check_cache_salt()?;
        let priority = self.priority()?;
        let ttft_deadline = self.ttft_deadline()?;
        if self.stream_options.is_some() && !self.stream {
            return Err(ApiError::invalid(
                "stream_options",
                "'stream_options' is only allowed when 'stream' is true.",
            ));
        }
        Ok(GenerationParams {
            stream: self.stream,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
            max_tokens,
            stop,
            ignore_eos: self.ignore_eos,
            cache_salt: self.cache_salt.clone(),
            priority,
            ttft_deadline,
            sampling: self.sampling(),
            arrived_at,
        })
    }

    fn check_model(&self, served_model: &str) -> Result<(), ApiError> {
        if self.model.is_empty() {
            return Err(ApiError::invalid("model", "'model' must not be empty."));
        }
        if self.model != served_model {
            return Err(ApiError::model_not_found(&self.model, served_model));
        }
        Ok(())
    }

    fn check_sampling(&self) -> Result<(), ApiError> {
        check_range("temperature", self.temperature, 0.0, 2.0)?;
        check_range("top_p", self.top_p, 0.0, 1.0)?;
        if self.top_p == Some(0.0) {
            return Err(ApiError::invalid(
                "top_p",
                "'top_p' must be greater than 0.",
            ));
        }
        check_range("min_p", self.min_p, 0.0, 1.0)?;
        check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        check_range("repetition_penalty", self.repetition_penalty, 0.01, 2.0)?;
        if let Some(k) = self.top_k
            && k < -1
        {
            return Err(ApiError::invalid(
                "top_k",
                format!("'top_k' must be -1 (disabled) or at least 0, got {k}."),
            ));
        }
        Ok(())
    }

    /// `max_completion_tokens`, else `max_tokens`, else none.
    fn max_tokens(&self) -> Result<Option<u32>, ApiError> {
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(v), _) => Some(("max_completion_tokens", v)),
            (None, Some(v)) => Some(("max_tokens", v)),
            (None, None) => None,
        };
        match max_tokens {
            Some((param, v)) if v < 1 || v > i64::from(u32::MAX) => Err(ApiError::invalid(
                param,
                format!("'{param}' must be at least 1, got {v}."),
            )),
            Some((_, v)) => Ok(Some(v as u32)),
            None => Ok(None),
        }
    }

    /// Fields OpenAI accepts that this server does not implement.
    fn check_unsupported(&self) -> Result<(), ApiError> {
        if let Some(n) = self.n
            && n != 1
        {
            return Err(ApiError::invalid(
                "n",
                format!("'n' must be 1 on this server, got {n}."),
            ));
        }
        if let Some(best_of) = self.best_of
            && best_of != 1
        {
            return Err(unsupported("best_of", "only one candidate is generated"));
        }
        if self.echo == Some(true) {
            return Err(unsupported("echo", "the prompt is not echoed"));
        }
        if !matches!(
            &self.logprobs,
            None | Some(Value::Null) | Some(Value::Bool(false))
        ) {
            return Err(unsupported(
                "logprobs",
                "log probabilities are not returned",
            ));
        }
        match &self.tools {
            None | Some(Value::Null) => {}
            Some(Value::Array(tools)) if tools.is_empty() => {}
            Some(_) => return Err(unsupported("tools", "tool calling is not implemented")),
        }
        if let Some(format) = &self.response_format {
            let kind = format.get("type").and_then(Value::as_str);
            if !matches!(format, Value::Null) && kind != Some("text") {
                return Err(unsupported(
                    "response_format",
                    "only {\"type\": \"text\"} is accepted",
                ));
            }
        }
        Ok(())
    }

    fn stop_sequences(&self, limits: &ServerConfig) -> Result<Vec<String>, ApiError> {
        let stop = match &self.stop {
            None => Vec::new(),
            Some(OneOrMany::One(stop)) => vec![stop.clone()],
            Some(OneOrMany::Many(stops)) => stops.clone(),
        };
        if stop.len() > limits.max_stop_sequences {
            return Err(ApiError::invalid(
                "stop",
                format!(
                    "'stop' may hold at most {} sequences, got {}.",
                    limits.max_stop_sequences,
                    stop.len()
                ),
            ));
        }
        if let Some(long) = stop.iter().find(|s| s.len() > limits.max_stop_bytes) {
            return Err(ApiError::invalid(
                "stop",
                format!(
                    "Each 'stop' sequence may be at most {} bytes, got {}.",
                    limits.max_stop_bytes,
                    long.len()
                ),
            ));
        }
        Ok(stop)
    }

    fn check_cache_salt(&self) -> Result<(), ApiError> {
        match &self.cache_salt {
            Some(salt) if salt.is_empty() || salt.len() > MAX_CACHE_SALT_BYTES => {
                Err(ApiError::invalid(
                    "cache_salt",
                    format!(
                        "'cache_salt' must be 1 to {MAX_CACHE_SALT_BYTES} bytes, got {}.",
                        salt.len()
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    fn priority(&self) -> Result<Option<Priority>, ApiError> {
        let Some(value) = &self.priority else {
            return Ok(None);
        };
        match value {
            Value::Number(number) if number.is_i64() => {
                Ok(Some(if number.as_i64().is_some_and(|level| level > 0) {
                    Priority::Batch
                } else {
                    Priority::Interactive
                }))
            }
            Value::String(name) if name == "interactive" => Ok(Some(Priority::Interactive)),
            Value::String(name) if name == "batch" => Ok(Some(Priority::Batch)),
            _ => Err(ApiError::invalid(
                "priority",
                "'priority' must be an integer (lower first; above 0 is batch) or \"interactive\" or \"batch\".",
            )),
        }
    }

    fn ttft_deadline(&self) -> Result<Option<Duration>, ApiError> {
        match self.ttft_deadline_ms {
            None => Ok(None),
            Some(ms @ 1..=MAX_TTFT_DEADLINE_MS) => Ok(Some(Duration::from_millis(ms as u64))),
            Some(ms) => Err(ApiError::invalid(
                "ttft_deadline_ms",
                format!("'ttft_deadline_ms' must be 1 to {MAX_TTFT_DEADLINE_MS}, got {ms}."),
            )),
        }
    }

    /// The requested sampling, with the engine's defaults for what is unset.
    fn sampling(&self) -> SamplingParams {
        let defaults = SamplingParams::default();
        SamplingParams {
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            top_k: self.top_k.unwrap_or(defaults.top_k).max(0),
            min_p: self.min_p.unwrap_or(defaults.min_p),
            seed: self.seed.map(|seed| seed as u64),
            repetition_penalty: self
                .repetition_penalty
                .unwrap_or(defaults.repetition_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(defaults.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(defaults.frequency_penalty),
        }
    }
}

/// Parses and validates a chat or text completion body into the
/// pipeline's request.
pub fn parse_request(
    endpoint: Endpoint,
    body: &[u8],
    served_model: &str,
    limits: &ServerConfig,
    arrived_at: Instant,
) -> Result<Request, ApiError> {
    let (common, prompt) = match endpoint {
        Endpoint::Chat => {
            let request = ChatCompletionRequest::parse(body)?;
            let messages = request.chat_messages()?;
            (request.common, Prompt::Chat(messages))
        }
        Endpoint::Completion => {
            let request = CompletionRequest::parse(body)?;
            let prompt = request.prompt_text()?.to_owned();
            (request.common, Prompt::Text(prompt))
        }
    };
    check_prompt_size(&prompt, limits.limits.max_prompt_bytes)?;
    let params = common.validate(served_model, limits, arrived_at)?;
    Ok(Request { prompt, params })
}

/// Refuses a prompt too large to be worth tokenizing, before the tokenizer
/// spends time on it.
fn check_prompt_size(prompt: &Prompt, max_bytes: usize) -> Result<(), ApiError> {
    let (bytes, param) = match prompt {
        Prompt::Chat(messages) => (
            messages.iter().map(|message| message.content.len()).sum(),
            "messages",
        ),
        Prompt::Text(text) => (text.len(), "prompt"),
    };
    if bytes > max_bytes {
        return Err(ApiError::invalid(
            param,
            format!(
                "The prompt is {bytes} bytes; this server takes at most {max_bytes} (server.limits.max_prompt_bytes)."
            ),
        ));
    }
    Ok(())
}

/// Longest `ttft_deadline_ms` accepted: an hour.
const MAX_TTFT_DEADLINE_MS: i64 = 3_600_000;

/// Longest `cache_salt` accepted: a salt needs no more to be unguessable.
const MAX_CACHE_SALT_BYTES: usize = 256;

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

impl ChatCompletionRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let value = parse_json(body)?;
        let common = from_value(&value)?;
        let ChatFields { messages } = from_value(&value)?;
        Ok(Self { messages, common })
    }

    pub fn chat_messages(&self) -> Result<Vec<ChatMessage>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages",
                "'messages' must not be empty.",
            ));
        }
        self.messages
            .iter()
            .enumerate()
            .map(|(i, message)| {
                if !ROLES.contains(&message.role.as_str()) {
                    return Err(ApiError::invalid(
                        format!("messages[{i}].role"),
                        format!(
                            "Invalid role '{}'; expected one of {}.",
                            message.role,
                            ROLES.join(", ")
                        ),
                    ));
                }
                let content = match &message.content {
                    None => {
                        return Err(ApiError::invalid(
                            format!("messages[{i}].content"),
                            "'content' is required.",
                        ));
                    }
                    Some(MessageContent::Text(text)) => text.clone(),
                    Some(MessageContent::Parts(parts)) => {
                        let mut text = String::new();
                        for (j, part) in parts.iter().enumerate() {
                            match (part.kind.as_str(), &part.text) {
                                ("text", Some(part_text)) => text.push_str(part_text),
                                _ => {
                                    return Err(ApiError::invalid(
                                        format!("messages[{i}].content[{j}]"),
                                        "Only content parts of type 'text' with a 'text' field are supported.",
                                    ));
                                }
                            }
                        }
                        text
                    }
                };
                // Templates written for OpenAI's roles rarely know `developer`.
                let role = if message.role == "developer" { "system" } else { &message.role };
                Ok(ChatMessage {
                    role: role.to_owned(),
                    content,
                })
            })
            .collect()
    }
}

impl CompletionRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let value = parse_json(body)?;
        let common = from_value(&value)?;
        let CompletionFields { prompt } = from_value(&value)?;
        Ok(Self { prompt, common })
    }

    pub fn prompt_text(&self) -> Result<&str, ApiError> {
        let prompt = match &self.prompt {
            None => return Err(ApiError::invalid("prompt", "'prompt' is required.")),
            Some(OneOrMany::One(prompt)) => prompt.as_str(),
            Some(OneOrMany::Many(prompts)) if prompts.len() == 1 => prompts[0].as_str(),
            Some(OneOrMany::Many(prompts)) => {
                return Err(ApiError::invalid(
                    "prompt",
                    format!(
                        "Exactly one prompt per request is supported, got {}.",
                        prompts.len()
                    ),
                ));
            }
        };
        if prompt.is_empty() {
            return Err(ApiError::invalid("prompt", "'prompt' must not be empty."));
        }
        Ok(prompt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(json: &str) -> Result<GenerationParams, ApiError> {
        let request = ChatCompletionRequest::parse(json.as_bytes())?;
        request.chat_messages()?;
        request
            .common
            .validate("m", &ServerConfig::default(), Instant::now())
    }

    fn param_of(json: &str) -> Option<String> {
        validate(json).unwrap_err().param
    }

    #[test]
    fn minimal_request_gets_openai_defaults() {
        let params =
            validate(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).unwrap();
        assert!(!params.stream);
        assert_eq!(params.max_tokens, None);
        assert_eq!(params.sampling, SamplingParams::default());
    }

    #[test]
    fn wrong_type_names_the_field() {
        assert_eq!(
            param_of(
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#
            ),
            Some("temperature".into())
        );
    }

    #[test]
    fn out_of_range_values_name_their_parameter() {
        for (field, value) in [
            ("temperature", "2.5"),
            ("top_p", "0"),
            ("presence_penalty", "-3"),
            ("max_tokens", "0"),
            ("n", "2"),
            ("top_k", "-5"),
        ] {
            let json = format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"{field}":{value}}}"#
            );
            assert_eq!(param_of(&json).as_deref(), Some(field), "{field}={value}");
        }
    }

    #[test]
    fn content_parts_are_joined_and_bad_roles_rejected() {
        let request = ChatCompletionRequest::parse(
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#,
        )
        .unwrap();
        assert_eq!(request.chat_messages().unwrap()[0].content, "ab");
        assert_eq!(
            param_of(r#"{"model":"m","messages":[{"role":"wizard","content":"hi"}]}"#),
            Some("messages[0].role".into())
        );
    }

    #[test]
    fn cache_salt_is_passed_on_when_one_to_256_bytes() {
        let with_salt = |salt: &str| {
            format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"cache_salt":"{salt}"}}"#
            )
        };
        let params = validate(&with_salt("team-7")).unwrap();
        assert_eq!(params.cache_salt.as_deref(), Some("team-7"));
        assert_eq!(
            validate(&with_salt(&"s".repeat(256)))
                .unwrap()
                .cache_salt
                .map(|s| s.len()),
            Some(256)
        );
        for bad in [String::new(), "s".repeat(257)] {
            assert_eq!(param_of(&with_salt(&bad)).as_deref(), Some("cache_salt"));
        }
        assert_eq!(
            param_of(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"cache_salt":7}"#)
                .as_deref(),
            Some("cache_salt")
        );
    }

    #[test]
    fn trailing_garbage_is_malformed_json() {
        let err = validate(r#"{"model":"m","messages":[]} x"#).unwrap_err();
        assert!(err.message.contains("not valid JSON"), "{}", err.message);
    }
}
