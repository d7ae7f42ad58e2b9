//! The HTTP side: routes, the API key, the bounded queue, responses whole or as server-sent
//! events, and shutdown on SIGINT/SIGTERM (no new requests; running ones finish).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use transact_model::forward::Model;
use transact_model::generate::{Finish, prompt_ids};
use transact_model::sample::Sampler;
use transact_model::tokenizer::Tokenizer;

use crate::api::{self, ApiError, Bounds, Prompt, Sampling};
use crate::chat::{CHATML, ChatTemplate};
use crate::engine::{self, Admission, Event, Job, TokenLogprob};

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    /// 0: any free port (the address is handed to `on_listen`).
    pub port: u16,
    /// Requests to `/v1/…` must carry `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Sequences decoded together at most.
    pub max_batch: usize,
    /// Sequences waiting to join the batch at most; beyond, 429.
    pub max_queue: usize,
    /// Tokens per sequence (prompt and generated) at most; capped at the model's context.
    pub ctx: usize,
    /// The name `/v1/models` lists and responses carry.
    pub model_name: String,
    /// Bytes of a request body at most.
    pub max_body_bytes: usize,
}

struct App {
    tok: Arc<Tokenizer>,
    jobs: mpsc::Sender<Job>,
    admission: Arc<Admission>,
    opts: ServeOptions,
    bounds: Bounds,
    chat: ChatTemplate,
    next_id: AtomicU64,
}

/// Serves `model` until SIGINT or SIGTERM, then lets running requests finish and returns.
/// `on_listen` gets the bound address before the first request is taken.
pub fn serve(model: Model, tok: Tokenizer, opts: ServeOptions, on_listen: impl FnOnce(SocketAddr)) -> Result<()> {
    let ctx = opts.ctx.min(model.config.max_position);
    let source = tok.meta.chat_template.clone().unwrap_or_else(|| CHATML.to_string());
    let special = |id: Option<u32>| id.map(|i| tok.token(i).unwrap_or_default()).unwrap_or_default();
    let chat = ChatTemplate::new(&source, special(tok.meta.bos), special(tok.meta.eos))?;
    let bounds = Bounds { ctx, vocab: model.config.vocab_size, max_prompts: opts.max_queue.max(1) };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind((opts.host.as_str(), opts.port)))
        .with_context(|| format!("cannot listen on {}:{}", opts.host, opts.port))?;
    on_listen(listener.local_addr()?);
    let tok = Arc::new(tok);
    let admission = Admission::new(opts.max_queue);
    let (jobs, rx) = mpsc::channel();
    let limits = engine::Limits { max_batch: opts.max_batch, ctx };
    let engine = {
        let (tok, admission) = (tok.clone(), admission.clone());
        std::thread::Builder::new().name("transact-engine".into()).spawn(move || engine::run(&model, &tok, rx, &admission, limits))?
    };
    let max_body = opts.max_body_bytes;
    let app = Arc::new(App { tok, jobs, admission: admission.clone(), opts, bounds, chat, next_id: AtomicU64::new(1) });
    let v1 = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route_layer(middleware::from_fn_with_state(app.clone(), authorize));
    let router = Router::new()
        .merge(v1)
        .route("/health", get(health))
        .fallback(|req: Request| async move { error(ApiError::not_found(&format!("{} {}", req.method(), req.uri().path()))) })
        .method_not_allowed_fallback(|req: Request| async move { error(ApiError::method_not_allowed(req.method().as_str(), req.uri().path())) })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(app);
    let served = rt.block_on(async { axum::serve(listener, router).with_graceful_shutdown(shutdown_signal(admission)).await });
    // The router, and with it the last sender of jobs, is gone: the engine ends once idle.
    engine.join().map_err(|_| anyhow::anyhow!("the engine thread panicked"))?;
    served.context("serving")
}

/// The first SIGINT or SIGTERM: no new requests, running ones finish. A second: exit at once.
async fn shutdown_signal(admission: Arc<Admission>) {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    let Ok(mut int) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    admission.close();
    eprintln!("shutting down: no new requests; running ones finish (signal again to stop at once)");
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("stopped at once: running requests were cut off");
        std::process::exit(130);
    });
}

fn error(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], e.body().to_string()).into_response()
}

fn ok_json(v: Value) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], v.to_string()).into_response()
}

/// Byte-wise comparison that does not stop at the first difference.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if let Some(key) = &app.opts.api_key {
        let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same_key(g.trim().as_bytes(), key.as_bytes())) {
            return error(ApiError::unauthorized());
        }
    }
    next.run(req).await
}

async fn health(State(app): State<Arc<App>>) -> Response {
    ok_json(json!({"status": "ok", "waiting": app.admission.waiting()}))
}

async fn models(State(app): State<Arc<App>>) -> Response {
    ok_json(json!({"object": "list", "data": [{"id": app.opts.model_name, "object": "model", "created": now(), "owned_by": "transact"}]}))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Which API a response follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
}

/// A request turned into sequences, and what its response needs.
struct Prepared {
    prompts: Vec<Vec<u32>>,
    /// With `echo`, each prompt's text (it starts the choice's text).
    echo: Option<Vec<String>>,
    sampling: Sampling,
}

fn body_bytes(app: &App, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| ApiError::invalid(None, format!("cannot read the request body ({e}); bodies are limited to {} bytes", app.opts.max_body_bytes)))
}

impl App {
    fn tokens(&self, p: Prompt) -> Result<(Vec<u32>, String), ApiError> {
        let (ids, text) = match p {
            Prompt::Text(t) => (prompt_ids(&self.tok, &t).map_err(|e| ApiError::invalid(Some("prompt"), format!("{e:#}")))?, t),
            Prompt::Ids(ids) => {
                let text = self.tok.decode(&ids).map_err(|e| ApiError::invalid(Some("prompt"), format!("{e:#}")))?;
                (ids, text)
            }
        };
        Ok((self.fits(ids)?, text))
    }

    /// `ids` if they make a prompt this server can run: at least one token, at most the context.
    fn fits(&self, ids: Vec<u32>) -> Result<Vec<u32>, ApiError> {
        if ids.is_empty() {
            return Err(ApiError::invalid(Some("prompt"), "the prompt is empty: it needs at least one token"));
        }
        if ids.len() > self.bounds.ctx {
            return Err(ApiError::invalid(Some("prompt"), format!("the prompt is {} tokens, more than the context of {} tokens", ids.len(), self.bounds.ctx)));
        }
        Ok(ids)
    }

    fn prepare_completion(&self, body: &[u8]) -> Result<Prepared, ApiError> {
        let c = api::completion(body, &self.bounds)?;
        let (prompts, texts): (Vec<_>, Vec<_>) = c.prompts.into_iter().map(|p| self.tokens(p)).collect::<Result<Vec<_>, _>>()?.into_iter().unzip();
        Ok(Prepared { prompts, echo: c.echo.then_some(texts), sampling: c.sampling })
    }

    fn prepare_chat(&self, body: &[u8]) -> Result<Prepared, ApiError> {
        let c = api::chat(body, &self.bounds)?;
        let text = self.chat.render(&c.messages).map_err(|e| ApiError::invalid(Some("messages"), format!("{e:#}")))?;
        // The template writes the special tokens as text; no BOS is added on top of it.
        let ids = self.tok.encode(&text).map_err(|e| ApiError::invalid(Some("messages"), format!("{e:#}")))?;
        Ok(Prepared { prompts: vec![self.fits(ids)?], echo: None, sampling: c.sampling })
    }
}

async fn completions(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    run(app, body, Kind::Completion).await
}

async fn chat_completions(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    run(app, body, Kind::Chat).await
}

async fn run(app: Arc<App>, body: Result<Bytes, BytesRejection>, kind: Kind) -> Response {
    let body = match body_bytes(&app, body) {
        Ok(b) => b,
        Err(e) => return error(e),
    };
    // Tokenizing a long prompt takes a while: off the thread that answers the others.
    let worker = app.clone();
    let prepared = tokio::task::spawn_blocking(move || match kind {
        Kind::Completion => worker.prepare_completion(&body),
        Kind::Chat => worker.prepare_chat(&body),
    })
    .await;
    let p = match prepared {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return error(e),
        Err(e) => return error(ApiError::internal(format!("preparing the request failed: {e}"))),
    };
    let s = &p.sampling;
    let seed = s.seed.unwrap_or_else(rand::random);
    let samplers = match (0..p.prompts.len()).map(|i| Sampler::new(s.temperature, s.top_p, seed.wrapping_add(i as u64))).collect::<Result<Vec<_>, _>>() {
        Ok(x) => x,
        Err(e) => return error(ApiError::invalid(None, e.to_string())),
    };
    if !app.admission.reserve(p.prompts.len()) {
        return error(if app.admission.is_closed() { ApiError::shutting_down() } else { ApiError::busy(app.opts.max_queue) });
    }
    let (tx, rx) = unbounded_channel();
    for (index, (prompt, sampler)) in p.prompts.iter().zip(samplers).enumerate() {
        let job = Job {
            index,
            prompt: prompt.clone(),
            max_tokens: s.max_tokens.unwrap_or(app.bounds.ctx),
            sampler,
            stop: s.stop.clone(),
            logprobs: s.logprobs,
            echo: p.echo.is_some(),
            events: tx.clone(),
        };
        if app.jobs.send(job).is_err() {
            return error(ApiError::internal("the engine has stopped"));
        }
    }
    drop(tx);
    let id = format!("{}-{}", if kind == Kind::Chat { "chatcmpl" } else { "cmpl" }, app.next_id.fetch_add(1, Ordering::Relaxed));
    let head = Head { kind, id, created: now(), model: app.opts.model_name.clone(), logprobs: p.sampling.logprobs.is_some(), n: p.prompts.len() };
    if p.sampling.stream { stream(head, p, rx) } else { whole(head, p, rx).await }
}

/// The fields every response object or chunk of one request shares.
struct Head {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    logprobs: bool,
    n: usize,
}

impl Head {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Completion, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }

    /// One choice of a whole response (`chunk` false) or of a stream chunk: its text (a chunk
    /// without text is a finish chunk), the log-probabilities of `tokens` (text starting at
    /// character `offset`) when given, and the finish reason when known.
    fn choice(&self, chunk: bool, index: usize, text: Option<&str>, tokens: Option<&[TokenLogprob]>, offset: usize, finish: Option<Finish>) -> Value {
        let reason = finish.map(finish_reason);
        match (self.kind, chunk) {
            (Kind::Completion, _) => {
                let lp = tokens.map(|t| completion_logprobs(t, offset));
                json!({"index": index, "text": text.unwrap_or(""), "logprobs": lp, "finish_reason": reason})
            }
            (Kind::Chat, _) => {
                let lp = tokens.map(|t| json!({"content": chat_logprobs(t)}));
                let body = match (chunk, text) {
                    (false, t) => ("message", json!({"role": "assistant", "content": t.unwrap_or("")})),
                    (true, Some(t)) => ("delta", json!({"content": t})),
                    (true, None) => ("delta", json!({})),
                };
                json!({"index": index, body.0: body.1, "logprobs": lp, "finish_reason": reason})
            }
        }
    }

    fn wrap(&self, chunk: bool, choices: Vec<Value>) -> Value {
        json!({"id": self.id, "object": self.object(chunk), "created": self.created, "model": self.model, "choices": choices})
    }
}

fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Eos | Finish::Stop => "stop",
        Finish::Length | Finish::Context => "length",
    }
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// Completions' log-probability object for `tokens`, whose text starts at character `offset`.
fn completion_logprobs(tokens: &[TokenLogprob], mut offset: usize) -> Value {
    let mut text_offset = Vec::with_capacity(tokens.len());
    for t in tokens {
        text_offset.push(offset);
        offset += t.text.chars().count();
    }
    json!({
        "tokens": tokens.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": tokens.iter().map(|t| t.logprob.map(|lp| {
            // The chosen token is listed with the alternatives, as vLLM and llama.cpp do.
            let mut top: serde_json::Map<String, Value> = t.top.iter().map(|(s, l)| (s.clone(), json!(l))).collect();
            top.entry(t.text.clone()).or_insert(json!(lp));
            Value::Object(top)
        })).collect::<Vec<_>>(),
        "text_offset": text_offset,
    })
}

/// Chat's log-probability entries for `tokens`.
fn chat_logprobs(tokens: &[TokenLogprob]) -> Value {
    let entry = |text: &str, lp: f32| json!({"token": text, "logprob": lp, "bytes": text.as_bytes()});
    Value::Array(
        tokens
            .iter()
            .map(|t| {
                let mut e = entry(&t.text, t.logprob.unwrap_or(0.0));
                e["top_logprobs"] = Value::Array(t.top.iter().map(|(s, l)| entry(s, *l)).collect());
                e
            })
            .collect(),
    )
}

/// One choice as it accumulates.
#[derive(Default)]
struct Acc {
    text: String,
    tokens: Vec<TokenLogprob>,
    finish: Option<Finish>,
    usage: (usize, usize),
}

async fn whole(head: Head, p: Prepared, mut rx: UnboundedReceiver<Event>) -> Response {
    let mut accs: Vec<Acc> = (0..head.n).map(|_| Acc::default()).collect();
    let mut done = 0;
    while done < head.n {
        match rx.recv().await {
            Some(Event::Prompt { index, tokens }) => {
                let a = &mut accs[index];
                a.text = p.echo.as_ref().map(|e| e[index].clone()).unwrap_or_default();
                a.tokens = tokens;
            }
            Some(Event::Token { index, text, logprob }) => {
                accs[index].text.push_str(&text);
                accs[index].tokens.extend(logprob);
            }
            Some(Event::Done { index, finish, prompt_tokens, completion_tokens }) => {
                accs[index].finish = Some(finish);
                accs[index].usage = (prompt_tokens, completion_tokens);
                done += 1;
            }
            Some(Event::Error { message, .. }) => return error(ApiError::internal(message)),
            None => return error(ApiError::internal("the engine stopped before the response was complete")),
        }
    }
    let (prompt_tokens, completion_tokens) = accs.iter().fold((0, 0), |(a, b), x| (a + x.usage.0, b + x.usage.1));
    let choices = accs
        .into_iter()
        .enumerate()
        .map(|(index, a)| head.choice(false, index, Some(&a.text), head.logprobs.then_some(&a.tokens[..]), 0, a.finish))
        .collect();
    let mut v = head.wrap(false, choices);
    v["usage"] = usage(prompt_tokens, completion_tokens);
    ok_json(v)
}

/// Server-sent events: one chunk per token (text and log-probabilities), a last chunk per
/// choice with its finish reason, usage when asked for, then `data: [DONE]`. A client that
/// goes away drops the stream, which drops `rx`, which tells the engine to stop.
fn stream(head: Head, p: Prepared, mut rx: UnboundedReceiver<Event>) -> Response {
    let (out, body) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(32);
    tokio::spawn(async move {
        let send = |v: Value| Ok(Bytes::from(format!("data: {v}\n\n")));
        let mut offsets = vec![0usize; head.n];
        let mut totals = (0, 0);
        let mut done = 0;
        if head.kind == Kind::Chat {
            let first = json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null});
            if out.send(send(head.wrap(true, vec![first]))).await.is_err() {
                return;
            }
        }
        while done < head.n {
            let choice = match rx.recv().await {
                Some(Event::Prompt { index, tokens }) => {
                    let text = p.echo.as_ref().map(|e| e[index].clone()).unwrap_or_default();
                    offsets[index] = text.chars().count();
                    head.choice(true, index, Some(&text), head.logprobs.then_some(&tokens[..]), 0, None)
                }
                Some(Event::Token { index, text, logprob }) => {
                    if text.is_empty() && logprob.is_none() {
                        continue;
                    }
                    let tokens: Vec<TokenLogprob> = logprob.into_iter().collect();
                    let v = head.choice(true, index, Some(&text), head.logprobs.then_some(&tokens[..]), offsets[index], None);
                    offsets[index] += tokens.iter().map(|t| t.text.chars().count()).sum::<usize>();
                    v
                }
                Some(Event::Done { index, finish, prompt_tokens, completion_tokens }) => {
                    done += 1;
                    totals = (totals.0 + prompt_tokens, totals.1 + completion_tokens);
                    head.choice(true, index, None, None, 0, Some(finish))
                }
                Some(Event::Error { message, .. }) => {
                    let _ = out.send(send(ApiError::internal(message).body())).await;
                    return;
                }
                None => {
                    let _ = out.send(send(ApiError::internal("the engine stopped before the response was complete").body())).await;
                    return;
                }
            };
            if out.send(send(head.wrap(true, vec![choice]))).await.is_err() {
                return;
            }
        }
        if p.sampling.include_usage {
            let mut v = head.wrap(true, Vec::new());
            v["usage"] = usage(totals.0, totals.1);
            if out.send(send(v)).await.is_err() {
                return;
            }
        }
        let _ = out.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(body));
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream")), (header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))],
        body,
    )
        .into_response()
}
