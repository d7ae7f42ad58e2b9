//! `transact serve` on the real model, as a client sees it: a server started on a free loopback
//! port, spoken to over HTTP.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use transact::eval::scorer::{encode, score_group};
use transact::eval::task::Request;

use crate::common::{gguf_path, model, real_tokens};

/// A running `transact serve`, stopped (SIGTERM) when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let model = gguf_path();
        let mut child = Command::new(env!("CARGO_BIN_EXE_transact"))
            .args(["serve", model.to_str().unwrap(), "--port", "0"])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let base = loop {
            let line = lines.next().expect("the server printed its address").unwrap();
            if let Some(at) = line.find("http://") {
                break line[at..].split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Server { child, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.trim_end_matches("/v1"))
    }

    /// POSTs `body` (JSON text), with `key` as bearer token; (status, body).
    fn post(&self, path: &str, body: &str, key: Option<&str>) -> (u16, String) {
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
        let mut req = agent.post(&self.url(path)).header("Content-Type", "application/json");
        if let Some(k) = key {
            req = req.header("Authorization", &format!("Bearer {k}"));
        }
        let mut resp = req.send(body).unwrap();
        (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap())
    }

    fn json(&self, path: &str, body: Value) -> Value {
        let (status, text) = self.post(path, &body.to_string(), None);
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `data:` payloads of a server-sent event stream, `[DONE]` included.
fn events(text: &str) -> Vec<String> {
    text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).map(str::to_string).collect()
}

/// A completion is the greedy continuation `generate` gives; concurrent requests, decoded in one
/// batch, give each the text it gets alone; a list of prompts gives one choice each.
#[test]
fn completions_are_greedy_continuations_alone_and_batched() {
    let s = Server::start(&[]);
    let prompts = ["The capital of France is", "One, two, three, four,", "The quick brown fox jumps over the lazy", "My favourite food is"];
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| {
            let v = s.json("/v1/completions", json!({"prompt": p, "max_tokens": 8, "temperature": 0}));
            assert_eq!(v["usage"]["completion_tokens"], 8);
            v["choices"][0]["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(alone[0], " Paris.\n\nThe answer is:");
    assert_eq!(alone[1], " five, six, seven, eight,");
    let server = &s;
    let together: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = prompts
            .iter()
            .map(|p| sc.spawn(move || server.json("/v1/completions", json!({"prompt": p, "max_tokens": 8, "temperature": 0}))["choices"][0]["text"].as_str().unwrap().to_string()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, alone);
    let v = s.json("/v1/completions", json!({"prompt": prompts, "max_tokens": 8, "temperature": 0, "stop": ["\n"]}));
    let texts: Vec<&str> = v["choices"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap()).collect();
    assert_eq!(texts[0], " Paris.", "a stop string cuts the text");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    for (got, want) in texts.iter().zip(&alone) {
        assert_eq!(*got, want.split('\n').next().unwrap());
    }
}

/// `echo` with `logprobs`, as lm-eval's `local-completions` asks for a log-likelihood: the
/// continuation's summed log-probabilities and greediness equal `transact eval`'s scorer, for a
/// short context and for one longer than a prefill chunk.
#[test]
fn echo_logprobs_equal_the_scorers_loglikelihood() {
    let s = Server::start(&[]);
    let lm = model();
    let long = lm.tokenizer.decode(&real_tokens(300)).unwrap();
    // The third ends in the end-of-text token: its entry must still be there, last.
    let winter = "Question: When the Northern Hemisphere is tilted away from the Sun causing the rays of light to hit Earth at large angles, which season occurs?\nAnswer:";
    for (context, continuation) in [("The capital of France is", " Paris"), ("The capital of France is", " a small village"), (winter, " winter"), (long.as_str(), " the end of the story.")] {
        let enc = encode(&lm.tokenizer, &Request { context: context.into(), continuation: continuation.into() }, 2048).unwrap();
        let want = score_group(&lm.model, std::slice::from_ref(&enc)).unwrap()[0];
        // lm-eval's request and its parsing (`parse_logprobs`).
        let v = s.json("/v1/completions", json!({"prompt": enc.ids, "max_tokens": 1, "temperature": 0, "logprobs": 1, "echo": true, "seed": 1234}));
        let lp = &v["choices"][0]["logprobs"];
        let token_lps = &lp["token_logprobs"].as_array().unwrap()[enc.cont_start..enc.ids.len()];
        let tops = &lp["top_logprobs"].as_array().unwrap()[enc.cont_start..enc.ids.len()];
        let loglik: f64 = token_lps.iter().map(|x| x.as_f64().unwrap()).sum();
        let greedy = token_lps.iter().zip(tops).all(|(t, top)| {
            let best = top.as_object().unwrap().values().map(|x| x.as_f64().unwrap()).fold(f64::NEG_INFINITY, f64::max);
            t.as_f64().unwrap() == best
        });
        assert!((loglik - want.loglik).abs() < 2e-3, "{continuation:?}: server {loglik}, scorer {}", want.loglik);
        assert_eq!(greedy, want.is_greedy, "{continuation:?}");
        assert_eq!(lp["token_logprobs"][0], Value::Null, "nothing predicts the first token");
        assert_eq!(v["usage"]["prompt_tokens"].as_u64().unwrap() as usize, enc.ids.len());
        assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), enc.ids.len() + 1, "{continuation:?}: one entry per prompt token and one for the generated token");
    }
}

/// A streamed chat: the role first, then text pieces, a finish reason, usage, `[DONE]`; the
/// pieces make the text the same chat gets whole.
#[test]
fn chat_streams_the_text_it_returns_whole() {
    let s = Server::start(&[]);
    let body = json!({"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 12, "temperature": 0});
    let whole = s.json("/v1/chat/completions", body.clone());
    let text = whole["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("Paris"), "{text}");
    let mut streamed = body;
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let (status, raw) = s.post("/v1/chat/completions", &streamed.to_string(), None);
    assert_eq!(status, 200);
    let ev = events(&raw);
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = ev[..ev.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let pieces: String = chunks.iter().filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str()).collect();
    assert_eq!(pieces, text);
    let finish = chunks.iter().find_map(|c| c["choices"].get(0)?["finish_reason"].as_str()).unwrap();
    assert_eq!(finish, whole["choices"][0]["finish_reason"]);
    assert_eq!(chunks.last().unwrap()["usage"], whole["usage"]);
}

/// With an API key, a request without it or with another gets 401 (and runs nothing); bad
/// requests get 400 in OpenAI's error shape, with the limit they passed.
#[test]
fn keys_and_bad_requests_get_401_and_400() {
    let s = Server::start(&["--api-key", "sekret", "--ctx", "64", "--max-body-bytes", "4096"]);
    let body = json!({"prompt": "Hello", "max_tokens": 2}).to_string();
    for key in [None, Some("wrong"), Some("sekret2"), Some("")] {
        let (status, text) = s.post("/v1/completions", &body, key);
        assert_eq!(status, 401, "key {key:?}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["type"], "authentication_error");
    }
    assert_eq!(s.post("/v1/completions", &body, Some("sekret")).0, 200);
    let long = "word ".repeat(100);
    for (body, says) in [
        ("{\"prompt\": ".to_string(), "not a valid request"),
        (json!({"prompt": "a", "max_tokens": "many"}).to_string(), "invalid type"),
        (json!({"prompt": "a", "best_offer": 1}).to_string(), "unknown field"),
        (json!({"prompt": "a", "temperature": -1}).to_string(), "between 0 and 2"),
        (json!({"prompt": "a", "max_tokens": 1000000}).to_string(), "context of 64"),
        (json!({"prompt": long}).to_string(), "context of 64"),
        (json!({"prompt": [1, 2, 99999999]}).to_string(), "token id 99999999"),
        (json!({"prompt": ""}).to_string(), "empty"),
        (json!({"prompt": "a".repeat(5000)}).to_string(), "4096 bytes"),
    ] {
        let (status, text) = s.post("/v1/completions", &body, Some("sekret"));
        assert_eq!(status, 400, "{body}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{body}: not JSON: {text}"));
        assert!(v["error"]["message"].as_str().unwrap().contains(says), "{body}: {text}");
    }
    let (status, _) = s.post("/v1/chat/completions", &json!({"messages": [{"role": "user"}], "n": 3}).to_string(), Some("sekret"));
    assert_eq!(status, 400);
}

/// A full queue answers 429 at once; a client that goes away frees its place; SIGTERM lets a
/// running stream finish, then the server exits 0.
#[test]
fn full_queue_429_disconnect_frees_and_sigterm_finishes_streams() {
    let mut s = Server::start(&["--max-batch", "1", "--max-queue", "1"]);
    let long = json!({"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0, "stream": true}).to_string();
    // Occupies the one place in the batch; read only its first event, then hang up.
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let mut first = agent.post(&s.url("/v1/completions")).send(&long).unwrap();
    let mut reader = first.body_mut().as_reader();
    let mut byte = [0u8; 1];
    reader.read_exact(&mut byte).unwrap();
    // Waits in the queue.
    let queued = std::thread::spawn({
        let url = s.url("/v1/completions");
        move || {
            let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
            let mut r = agent.post(&url).send(json!({"prompt": "Hi", "max_tokens": 2, "temperature": 0}).to_string()).unwrap();
            (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
        }
    });
    let t0 = Instant::now();
    loop {
        let mut h = agent.get(&s.url("/health")).call().unwrap();
        let v: Value = serde_json::from_str(&h.body_mut().read_to_string().unwrap()).unwrap();
        if v["waiting"] == 1 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the second request never queued");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, text) = s.post("/v1/completions", &json!({"prompt": "Hi", "max_tokens": 2}).to_string(), None);
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("--max-queue"), "{text}");
    // Hanging up on the long stream lets the queued request run.
    drop(reader);
    drop(first);
    let (status, text) = queued.join().unwrap();
    assert_eq!(status, 200, "{text}");
    // SIGTERM during a stream: the stream still ends with [DONE], then the server exits 0.
    let mut stream = agent.post(&s.url("/v1/completions")).send(json!({"prompt": "Once upon a time", "max_tokens": 48, "temperature": 0, "stream": true}).to_string()).unwrap();
    let mut reader = stream.body_mut().as_reader();
    reader.read_exact(&mut byte).unwrap();
    let status = s.terminate();
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert!(rest.trim_end().ends_with("data: [DONE]"), "{rest}");
    assert!(status.success(), "{status:?}");
}
