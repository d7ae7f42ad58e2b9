//! The OpenAI request bodies, parsed and checked against the model's limits before anything
//! runs, and OpenAI's error shape. A field the API defines but this server does not implement
//! is refused when it asks for something other than its default; an unknown field is refused.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Value, json};

/// An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
}

impl ApiError {
    /// 400: the request is wrong; `param` names the field.
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        Self { status: 400, message: message.into(), kind: "invalid_request_error", param: param.map(str::to_string) }
    }

    pub fn unauthorized() -> Self {
        Self { status: 401, message: "missing or wrong API key: send `Authorization: Bearer <key>` with the key the server was started with (--api-key)".into(), kind: "authentication_error", param: None }
    }

    pub fn busy(max_queue: usize) -> Self {
        Self { status: 429, message: format!("the server is busy: its queue of {max_queue} waiting sequences (--max-queue) is full; retry later"), kind: "rate_limit_error", param: None }
    }

    pub fn shutting_down() -> Self {
        Self { status: 503, message: "the server is shutting down".into(), kind: "server_error", param: None }
    }

    pub fn not_found(what: &str) -> Self {
        Self { status: 404, message: format!("no such endpoint: {what}; this server has POST /v1/completions, POST /v1/chat/completions, GET /v1/models and GET /health"), kind: "invalid_request_error", param: None }
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self { status: 405, message: format!("{path} does not take {method}"), kind: "invalid_request_error", param: None }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self { status: 500, message: message.into(), kind: "server_error", param: None }
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": null}})
    }
}

/// What every request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Tokens a sequence may hold (prompt and generated).
    pub ctx: usize,
    /// Rows of the model's vocabulary: token ids in a prompt must be below it.
    pub vocab: usize,
    /// Prompts in one completion request at most.
    pub max_prompts: usize,
}

/// Most likely alternatives per token at most (`logprobs`, `top_logprobs`).
pub const MAX_TOP_LOGPROBS: usize = 20;
/// Stop strings per request at most, and bytes per stop string.
const MAX_STOPS: usize = 16;
const MAX_STOP_BYTES: usize = 1024;

/// A prompt as the request gave it.
#[derive(Debug, Clone)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

/// Sampling and output settings shared by both endpoints.
#[derive(Debug, Clone)]
pub struct Sampling {
    /// None: until the context is full (chat without `max_tokens`).
    pub max_tokens: Option<usize>,
    pub temperature: f64,
    pub top_p: f64,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// Log-probabilities with this many alternatives per token.
    pub logprobs: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Completion {
    pub model: Option<String>,
    pub prompts: Vec<Prompt>,
    pub echo: bool,
    pub sampling: Sampling,
}

#[derive(Debug, Clone)]
pub struct Chat {
    pub model: Option<String>,
    pub messages: Vec<crate::chat::Message>,
    pub sampling: Sampling,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompletionBody {
    model: Option<String>,
    prompt: Option<Value>,
    max_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<i64>,
    stop: Option<Value>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    logprobs: Option<u64>,
    echo: Option<bool>,
    n: Option<u64>,
    best_of: Option<u64>,
    user: Option<String>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    logit_bias: Option<HashMap<String, f64>>,
    suffix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatMessage {
    role: String,
    content: Option<Value>,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatBody {
    model: Option<String>,
    messages: Option<Vec<ChatMessage>>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<i64>,
    stop: Option<Value>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    logprobs: Option<bool>,
    top_logprobs: Option<u64>,
    n: Option<u64>,
    user: Option<String>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    logit_bias: Option<HashMap<String, f64>>,
    response_format: Option<Value>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid(None, "the request body is empty: send a JSON object"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(None, format!("the request body is not a valid request: {e}")))
}

/// Settings the API defines that this server leaves at their defaults.
fn unsupported(n: Option<u64>, presence: Option<f64>, frequency: Option<f64>, bias: &Option<HashMap<String, f64>>) -> Result<(), ApiError> {
    if n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid(Some("n"), "only n = 1 is supported (send the request again for more choices)"));
    }
    for (name, v) in [("presence_penalty", presence), ("frequency_penalty", frequency)] {
        if v.is_some_and(|v| v != 0.0) {
            return Err(ApiError::invalid(Some(name), format!("{name} is not supported; leave it at 0")));
        }
    }
    if bias.as_ref().is_some_and(|b| !b.is_empty()) {
        return Err(ApiError::invalid(Some("logit_bias"), "logit_bias is not supported"));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn sampling(
    b: &Bounds,
    max_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<i64>,
    stop: Option<Value>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    logprobs: Option<u64>,
) -> Result<Sampling, ApiError> {
    let max_tokens = match max_tokens {
        Some(m) if m > b.ctx as u64 => return Err(ApiError::invalid(Some("max_tokens"), format!("max_tokens is {m}, more than the context of {} tokens", b.ctx))),
        m => m.map(|m| m as usize),
    };
    let temperature = temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(Some("temperature"), format!("temperature must be between 0 and 2, got {temperature}")));
    }
    let top_p = top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(Some("top_p"), format!("top_p must be in (0, 1], got {top_p}")));
    }
    let stop = match stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(a)) => a
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(ApiError::invalid(Some("stop"), format!("stop must be a string or a list of strings, got an element {other}"))),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(ApiError::invalid(Some("stop"), format!("stop must be a string or a list of strings, got {other}"))),
    };
    if stop.len() > MAX_STOPS || stop.iter().any(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid(Some("stop"), format!("at most {MAX_STOPS} stop strings of at most {MAX_STOP_BYTES} bytes each")));
    }
    if logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS as u64) {
        return Err(ApiError::invalid(Some("logprobs"), format!("at most {MAX_TOP_LOGPROBS} alternatives per token, got {}", logprobs.unwrap_or(0))));
    }
    let stream = stream.unwrap_or(false);
    if stream_options.is_some() && !stream {
        return Err(ApiError::invalid(Some("stream_options"), "stream_options is only allowed with stream = true"));
    }
    Ok(Sampling {
        max_tokens,
        temperature,
        top_p,
        seed: seed.map(|s| s as u64),
        stop,
        stream,
        include_usage: stream_options.and_then(|o| o.include_usage).unwrap_or(false),
        logprobs: logprobs.map(|k| k as usize),
    })
}

/// One prompt: text, or token ids below the vocabulary size.
fn one_prompt(v: &Value, b: &Bounds) -> Result<Option<Prompt>, ApiError> {
    Ok(Some(match v {
        Value::String(s) => Prompt::Text(s.clone()),
        Value::Array(a) if a.iter().all(Value::is_number) => Prompt::Ids(
            a.iter()
                .map(|x| match x.as_u64() {
                    Some(id) if (id as usize) < b.vocab => Ok(id as u32),
                    _ => Err(ApiError::invalid(Some("prompt"), format!("token id {x} is not one of the model's {} token ids", b.vocab))),
                })
                .collect::<Result<_, _>>()?,
        ),
        _ => return Ok(None),
    }))
}

pub fn completion(body: &[u8], b: &Bounds) -> Result<Completion, ApiError> {
    let c: CompletionBody = parse(body)?;
    unsupported(c.n, c.presence_penalty, c.frequency_penalty, &c.logit_bias)?;
    if c.best_of.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid(Some("best_of"), "only best_of = 1 is supported"));
    }
    if c.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid(Some("suffix"), "suffix is not supported"));
    }
    let _ = c.user;
    let prompt = c.prompt.ok_or_else(|| ApiError::invalid(Some("prompt"), "prompt is required"))?;
    let bad = || ApiError::invalid(Some("prompt"), "prompt must be a string, a list of strings, a list of token ids, or a list of lists of token ids");
    let prompts = match one_prompt(&prompt, b)? {
        Some(p) => vec![p],
        None => match &prompt {
            Value::Array(a) if !a.is_empty() => a.iter().map(|p| one_prompt(p, b)?.ok_or_else(bad)).collect::<Result<Vec<_>, _>>()?,
            _ => return Err(bad()),
        },
    };
    if prompts.len() > b.max_prompts {
        return Err(ApiError::invalid(Some("prompt"), format!("{} prompts in one request; at most {} (--max-queue)", prompts.len(), b.max_prompts)));
    }
    let mut sampling = sampling(b, c.max_tokens, c.temperature, c.top_p, c.seed, c.stop, c.stream, c.stream_options, c.logprobs)?;
    // The API's default for completions.
    sampling.max_tokens.get_or_insert(16);
    Ok(Completion { model: c.model, prompts, echo: c.echo.unwrap_or(false), sampling })
}

pub fn chat(body: &[u8], b: &Bounds) -> Result<Chat, ApiError> {
    let c: ChatBody = parse(body)?;
    unsupported(c.n, c.presence_penalty, c.frequency_penalty, &c.logit_bias)?;
    let _ = c.user;
    if c.tools.as_ref().is_some_and(|t| !t.is_null() && t != &Value::Array(Vec::new())) || c.tool_choice.as_ref().is_some_and(|t| !t.is_null() && t != "none") {
        return Err(ApiError::invalid(Some("tools"), "tools are not supported"));
    }
    if let Some(f) = c.response_format.as_ref().filter(|f| !f.is_null())
        && f.get("type").and_then(Value::as_str) != Some("text")
    {
        return Err(ApiError::invalid(Some("response_format"), "only the text response format is supported"));
    }
    let messages = c.messages.ok_or_else(|| ApiError::invalid(Some("messages"), "messages is required"))?;
    if messages.is_empty() {
        return Err(ApiError::invalid(Some("messages"), "messages is empty"));
    }
    let messages = messages
        .into_iter()
        .map(|m| {
            crate::chat::check_role(&m.role).map_err(|e| ApiError::invalid(Some("messages"), e.to_string()))?;
            let _ = m.name;
            let content = match m.content {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s,
                // Content parts: text only.
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => Ok(t.to_string()),
                        _ => Err(ApiError::invalid(Some("messages"), format!("only text content parts are supported, got {p}"))),
                    })
                    .collect::<Result<String, _>>()?,
                Some(other) => return Err(ApiError::invalid(Some("messages"), format!("a message's content must be a string or a list of text parts, got {other}"))),
            };
            Ok(crate::chat::Message { role: m.role, content })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let top = match (c.logprobs, c.top_logprobs) {
        (Some(true), k) => Some(k.unwrap_or(0)),
        (_, Some(k)) if k > 0 => return Err(ApiError::invalid(Some("top_logprobs"), "top_logprobs needs logprobs = true")),
        _ => None,
    };
    let max_tokens = c.max_completion_tokens.or(c.max_tokens);
    let sampling = sampling(b, max_tokens, c.temperature, c.top_p, c.seed, c.stop, c.stream, c.stream_options, top)?;
    Ok(Chat { model: c.model, messages, sampling })
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Bounds = Bounds { ctx: 100, vocab: 50, max_prompts: 4 };

    fn err(body: &str) -> String {
        completion(body.as_bytes(), &B).unwrap_err().message
    }

    #[test]
    fn completions_parse_every_prompt_form_and_refuse_what_they_cannot_run() {
        let c = completion(br#"{"prompt": "hi", "max_tokens": 3, "logprobs": 1, "echo": true, "seed": -1, "stop": "x"}"#, &B).unwrap();
        assert!(matches!(&c.prompts[..], [Prompt::Text(t)] if t == "hi"));
        assert_eq!((c.sampling.max_tokens, c.sampling.logprobs, c.echo, c.sampling.stop.len()), (Some(3), Some(1), true, 1));
        let c = completion(br#"{"prompt": [[1, 2], [3]]}"#, &B).unwrap();
        assert!(matches!(&c.prompts[..], [Prompt::Ids(a), Prompt::Ids(b)] if a == &[1, 2] && b == &[3]));
        assert_eq!(c.sampling.max_tokens, Some(16));
        assert!(matches!(&completion(br#"{"prompt": [7, 8]}"#, &B).unwrap().prompts[..], [Prompt::Ids(a)] if a == &[7, 8]));
        assert!(err(r#"{"prompt": [50]}"#).contains("token id 50"));
        assert!(err(r#"{"prompt": [-1]}"#).contains("token id -1"));
        assert!(err(r#"{"prompt": "a", "max_tokens": 101}"#).contains("context of 100"));
        assert!(err(r#"{"prompt": "a", "max_tokens": -1}"#).contains("invalid value"));
        assert!(err(r#"{"prompt": "a", "temperature": 3}"#).contains("between 0 and 2"));
        assert!(err(r#"{"prompt": "a", "top_p": 0}"#).contains("top_p"));
        assert!(err(r#"{"prompt": "a", "logprobs": 21}"#).contains("at most 20"));
        assert!(err(r#"{"prompt": "a", "n": 2}"#).contains("n = 1"));
        assert!(err(r#"{"prompt": "a", "frobnicate": 1}"#).contains("unknown field"));
        assert!(err(r#"{"prompt": "a", "max_tokens": "5"}"#).contains("invalid type"));
        assert!(err(r#"{"prompt": 5}"#).contains("prompt must be"));
        // No token ids: refused as an empty prompt once tokenized (`http`), like "".
        assert!(matches!(&completion(br#"{"prompt": []}"#, &B).unwrap().prompts[..], [Prompt::Ids(a)] if a.is_empty()));
        assert!(err(r#"{"prompt": ["a", "b", "c", "d", "e"]}"#).contains("at most 4"));
        assert!(err(r#"{"max_tokens": 1}"#).contains("prompt is required"));
        assert!(err(r#"[1"#).contains("not a valid request"));
        assert!(err("").contains("empty"));
        assert!(err(r#"{"prompt": "a", "stream_options": {"include_usage": true}}"#).contains("stream = true"));
    }

    #[test]
    fn chats_take_text_content_and_known_roles() {
        let c = chat(br#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}], "logprobs": true, "top_logprobs": 2}"#, &B).unwrap();
        assert_eq!((c.messages[0].content.as_str(), c.sampling.logprobs, c.sampling.max_tokens), ("ab", Some(2), None));
        let e = |b: &str| chat(b.as_bytes(), &B).unwrap_err().message;
        assert!(e(r#"{"messages": [{"role": "wizard", "content": "a"}]}"#).contains("unknown role"));
        assert!(e(r#"{"messages": []}"#).contains("empty"));
        assert!(e(r#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#).contains("only text"));
        assert!(e(r#"{"messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function"}]}"#).contains("tools"));
        assert!(e(r#"{"messages": [{"role": "user", "content": "a"}], "top_logprobs": 3}"#).contains("needs logprobs"));
    }
}
