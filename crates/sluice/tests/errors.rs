//! Malformed and out-of-range requests get the documented 4xx with an
//! OpenAI-style error body, and none of them hurts the server.

mod common;

use common::{client, server};
use reqwest::Method;
use serde_json::{Value, json};

struct Case {
    name: &'static str,
    method: Method,
    path: &'static str,
    body: String,
    status: u16,
    param: Option<&'static str>,
}

fn case(
    name: &'static str,
    path: &'static str,
    body: Value,
    status: u16,
    param: Option<&'static str>,
) -> Case {
    Case {
        name,
        method: Method::POST,
        path,
        body: body.to_string(),
        status,
        param,
    }
}

fn chat_with(extra: Value) -> Value {
    let mut body = json!({
        "model": server().model,
        "messages": [{"role": "user", "content": "hi"}],
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

fn cases() -> Vec<Case> {
    let model = server().model.as_str();
    let chat = "/v1/chat/completions";
    let completions = "/v1/completions";
    let mut cases = vec![
        Case {
            name: "malformed JSON",
            method: Method::POST,
            path: chat,
            body: "{\"model\": ".into(),
            status: 400,
            param: None,
        },
        Case {
            name: "not an object",
            method: Method::POST,
            path: chat,
            body: "[1, 2, 3]".into(),
            status: 400,
            param: None,
        },
        Case {
            name: "empty body",
            method: Method::POST,
            path: completions,
            body: String::new(),
            status: 400,
            param: None,
        },
        Case {
            name: "oversized body",
            method: Method::POST,
            path: chat,
            body: format!(
                "{{\"model\":\"{model}\",\"pad\":\"{}\"}}",
                "x".repeat(2 * 1024 * 1024)
            ),
            status: 413,
            param: None,
        },
        Case {
            name: "unknown route",
            method: Method::POST,
            path: "/v1/nothing",
            body: "{}".into(),
            status: 404,
            param: None,
        },
        Case {
            name: "wrong method",
            method: Method::GET,
            path: chat,
            body: String::new(),
            status: 405,
            param: None,
        },
        case(
            "missing model",
            chat,
            json!({"messages": [{"role": "user", "content": "hi"}]}),
            400,
            Some("model"),
        ),
        case(
            "unknown model",
            chat,
            chat_with(json!({"model": "gpt-9"})),
            404,
            Some("model"),
        ),
        case(
            "missing messages",
            chat,
            json!({"model": model}),
            400,
            Some("messages"),
        ),
        case(
            "empty messages",
            chat,
            chat_with(json!({"messages": []})),
            400,
            Some("messages"),
        ),
        case(
            "bad role",
            chat,
            chat_with(json!({"messages": [{"role": "robot", "content": "x"}]})),
            400,
            Some("messages[0].role"),
        ),
        case(
            "missing content",
            chat,
            chat_with(json!({"messages": [{"role": "user"}]})),
            400,
            Some("messages[0].content"),
        ),
        case(
            "image content part",
            chat,
            chat_with(json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})),
            400,
            Some("messages[0].content[0]"),
        ),
        case(
            "messages not a list",
            chat,
            chat_with(json!({"messages": "hi"})),
            400,
            Some("messages"),
        ),
        case(
            "temperature too high",
            chat,
            chat_with(json!({"temperature": 3.0})),
            400,
            Some("temperature"),
        ),
        case(
            "temperature negative",
            chat,
            chat_with(json!({"temperature": -0.5})),
            400,
            Some("temperature"),
        ),
        case(
            "temperature as string",
            chat,
            chat_with(json!({"temperature": "warm"})),
            400,
            Some("temperature"),
        ),
        case(
            "top_p zero",
            chat,
            chat_with(json!({"top_p": 0})),
            400,
            Some("top_p"),
        ),
        case(
            "top_p above one",
            chat,
            chat_with(json!({"top_p": 1.5})),
            400,
            Some("top_p"),
        ),
        case(
            "max_tokens zero",
            chat,
            chat_with(json!({"max_tokens": 0})),
            400,
            Some("max_tokens"),
        ),
        case(
            "max_tokens negative",
            chat,
            chat_with(json!({"max_tokens": -3})),
            400,
            Some("max_tokens"),
        ),
        case(
            "max_completion_tokens zero",
            chat,
            chat_with(json!({"max_completion_tokens": 0})),
            400,
            Some("max_completion_tokens"),
        ),
        case("n of two", chat, chat_with(json!({"n": 2})), 400, Some("n")),
        case(
            "presence penalty out of range",
            chat,
            chat_with(json!({"presence_penalty": 5})),
            400,
            Some("presence_penalty"),
        ),
        case(
            "frequency penalty out of range",
            chat,
            chat_with(json!({"frequency_penalty": -2.5})),
            400,
            Some("frequency_penalty"),
        ),
        case(
            "too many stops",
            chat,
            chat_with(json!({"stop": ["a", "b", "c", "d", "e"]})),
            400,
            Some("stop"),
        ),
        case(
            "stop not a string",
            chat,
            chat_with(json!({"stop": 7})),
            400,
            Some("stop"),
        ),
        case(
            "logprobs requested",
            chat,
            chat_with(json!({"logprobs": true})),
            400,
            Some("logprobs"),
        ),
        case(
            "tools requested",
            chat,
            chat_with(json!({"tools": [{"type": "function"}]})),
            400,
            Some("tools"),
        ),
        case(
            "stream_options without stream",
            chat,
            chat_with(json!({"stream_options": {"include_usage": true}})),
            400,
            Some("stream_options"),
        ),
        case(
            "completion without prompt",
            completions,
            json!({"model": model}),
            400,
            Some("prompt"),
        ),
        case(
            "completion empty prompt",
            completions,
            json!({"model": model, "prompt": ""}),
            400,
            Some("prompt"),
        ),
        case(
            "completion with two prompts",
            completions,
            json!({"model": model, "prompt": ["a", "b"]}),
            400,
            Some("prompt"),
        ),
        case(
            "completion echo",
            completions,
            json!({"model": model, "prompt": "a", "echo": true}),
            400,
            Some("echo"),
        ),
        case(
            "completion prompt too long",
            completions,
            json!({"model": model, "prompt": "word ".repeat(600)}),
            400,
            Some("prompt"),
        ),
    ];
    cases.shrink_to_fit();
    cases
}

#[tokio::test]
async fn every_bad_request_gets_its_documented_error() {
    let base = &server().base;
    let cases = cases();
    assert!(cases.len() >= 20);
    for case in cases {
        // A fresh connection per case: the server closes the one it refused
        // an oversized body on, and a pooled reuse would see a broken pipe.
        let response = client()
            .request(case.method.clone(), format!("{base}{}", case.path))
            .header("content-type", "application/json")
            .body(case.body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), case.status, "{}", case.name);
        let body: Value = response
            .json()
            .await
            .unwrap_or_else(|err| panic!("{}: body is JSON: {err}", case.name));
        let error = &body["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}: message in {body}",
            case.name
        );
        assert!(error["type"].is_string(), "{}: type in {body}", case.name);
        assert!(error.get("code").is_some(), "{}: code in {body}", case.name);
        assert_eq!(
            error["param"].as_str(),
            case.param,
            "{}: param in {body}",
            case.name
        );
    }
    let health = client().get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(
        health.status(),
        200,
        "server still healthy after bad requests"
    );
}
