//! A client for OpenAI-compatible HTTP APIs (`/chat/completions`, `/embeddings`), shared by the
//! VLM refiner, the OpenAI embedder and the LLM composer (feature `openai`).
//!
//! It speaks to OpenAI, Gemini's OpenAI endpoint, vLLM, Ollama and llama.cpp's server alike. Every
//! call has a timeout, a bounded number of retries on 429, 408, 5xx, timeouts and connection errors
//! (exponential backoff with jitter, `Retry-After` honoured), and a concurrency limit shared by all
//! clones of one client. Structured replies ask for `response_format: json_schema` and fall back to
//! `json_object`, then to plain text, when a server rejects that with a 400; [`OpenAiClient::chat_json`]
//! then parses and validates the reply and asks again, with the reason, when it is unusable.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::rng::SplitMix64;
use crate::{Result, StylusError};

#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// How often a call that is still waiting for its server says so (log level info), at most:
/// a third of the request timeout, at least every second.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Where and how to reach an OpenAI-compatible server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiConfig {
    /// The API root, version segment included: `https://api.openai.com/v1`,
    /// `http://localhost:11434/v1` (Ollama), `http://localhost:8080/v1` (llama.cpp, vLLM),
    /// `https://generativelanguage.googleapis.com/v1beta/openai` (Gemini).
    pub base_url: String,
    pub model: String,
    /// Name of the environment variable that holds the API key; `None` sends no key (local
    /// servers). The key itself never appears in configs or logs.
    pub api_key_env: Option<String>,
    /// Limit for one HTTP request, connection and body included.
    pub timeout_secs: f64,
    /// Retries after the first attempt on 429, 408, 5xx, timeouts and connection errors.
    pub max_retries: u32,
    /// Limit for one call over all its attempts and backoffs (and, for
    /// [`OpenAiClient::chat_json`], over all its reply attempts): past it the call fails with
    /// what the last attempt got.
    pub deadline_secs: f64,
    /// Backoff before the first retry; doubled on every further retry, up to `max_backoff_ms`.
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// A server's `Retry-After` is honoured up to this long (longer waits are cut to it).
    pub max_retry_after_ms: u64,
    /// Requests in flight at once over all clones of the client.
    pub max_concurrency: usize,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.openai.com/v1".to_string(),
            model: "gpt-4o-mini".to_string(),
            api_key_env: Some("OPENAI_API_KEY".to_string()),
            timeout_secs: 60.0,
            max_retries: 4,
            deadline_secs: 180.0,
            initial_backoff_ms: 500,
            max_backoff_ms: 20_000,
            max_retry_after_ms: 60_000,
            max_concurrency: 4,
        }
    }
}

impl OpenAiConfig {
    /// The config of one Stylus role from the environment, the same scheme for every role
    /// (`LLM`: the composer, `VLM`: the refiner, `EMBED`: the embedder):
    /// `STYLUS_<ROLE>_BASE_URL`, else `OPENAI_BASE_URL`, else the OpenAI API;
    /// `STYLUS_<ROLE>_MODEL`, else `default_model`;
    /// the key from `STYLUS_<ROLE>_API_KEY`, else `OPENAI_API_KEY`, else none is sent.
    /// Empty variables count as unset.
    pub fn from_env(role: &str, default_model: &str) -> Self {
        Self::from_vars(role, default_model, |name| std::env::var(name).ok())
    }

    /// [`Self::from_env`] reading variables through `var`.
    pub fn from_vars(
        role: &str,
        default_model: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Self {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let role_var = |suffix: &str| format!("STYLUS_{role}_{suffix}");
        let defaults = Self::default();
        Self {
            base_url: var(&role_var("BASE_URL"))
                .or_else(|| var("OPENAI_BASE_URL"))
                .unwrap_or(defaults.base_url.clone()),
            model: var(&role_var("MODEL")).unwrap_or_else(|| default_model.to_string()),
            api_key_env: [role_var("API_KEY"), "OPENAI_API_KEY".to_string()]
                .into_iter()
                .find(|name| var(name).is_some()),
            ..defaults
        }
    }

    /// The config with the timeouts and retries `network` sets.
    pub fn with_network(mut self, network: &crate::NetworkConfig) -> Self {
        if let Some(t) = network.timeout_secs {
            self.timeout_secs = t;
        }
        if let Some(r) = network.retries {
            self.max_retries = r;
        }
        if let Some(d) = network.deadline_secs {
            self.deadline_secs = d;
        }
        self
    }

    /// A config for `model` at `base_url` with the other defaults and no API key.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key_env: None,
            ..Self::default()
        }
    }
}

/// Who speaks a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// An image given to a vision model by URL (`https://...` or a `data:` URL).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageUrl {
    pub url: String,
}

/// One part of a multimodal message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

/// A message's content: plain text, or parts (text and images) for vision models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One message of a chat conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: MessageContent,
}

impl ChatMessage {
    pub fn system(text: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: MessageContent::Text(text.into()),
        }
    }

    pub fn user(text: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: MessageContent::Text(text.into()),
        }
    }

    /// A user message with text and images.
    pub fn user_parts(parts: Vec<ContentPart>) -> Self {
        Self {
            role: Role::User,
            content: MessageContent::Parts(parts),
        }
    }

    pub fn assistant(text: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: MessageContent::Text(text.into()),
        }
    }
}

/// A JSON schema the reply must follow (sent as `response_format: json_schema`, strict).
#[derive(Debug, Clone, PartialEq)]
pub struct JsonSchema {
    /// Name of the schema (letters, digits, `_` and `-`).
    pub name: String,
    pub schema: Value,
}

/// The `response_format` actually sent, from strictest to plainest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ResponseFormat {
    JsonSchema = 0,
    JsonObject = 1,
    Text = 2,
}

impl ResponseFormat {
    fn from_level(level: u8) -> Self {
        match level {
            0 => Self::JsonSchema,
            1 => Self::JsonObject,
            _ => Self::Text,
        }
    }

    fn plainer(self) -> Option<Self> {
        match self {
            Self::JsonSchema => Some(Self::JsonObject),
            Self::JsonObject => Some(Self::Text),
            Self::Text => None,
        }
    }
}

/// A chat completion request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    /// Ask for JSON following this schema; `None` asks for plain text.
    pub schema: Option<JsonSchema>,
    /// Sampling temperature; `None` leaves the server's default (some models accept no other).
    pub temperature: Option<f32>,
}

/// The text of a chat completion and how it was asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatReply {
    pub content: String,
    /// The `response_format` the server accepted.
    pub format: ResponseFormat,
    /// `stop`, `length`, ... when the server says.
    pub finish_reason: Option<String>,
}

/// A validated structured reply and the conversation that produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonReply<T> {
    pub value: T,
    /// The request's messages, any re-asks, and last the accepted assistant reply: continue it for
    /// a follow-up turn.
    pub messages: Vec<ChatMessage>,
    /// Chat calls made (1 when the first reply was usable).
    pub attempts: u32,
}

/// Longest stretch of an unusable reply sent back to the model when asking again.
const MAX_ECHOED_REPLY_CHARS: usize = 4_000;
/// Longest stretch of an error body quoted in an error message.
const MAX_ERROR_BODY_CHARS: usize = 500;

/// A client for one model on one OpenAI-compatible server. Cheap to clone; clones share the
/// connection pool and the concurrency limit.
#[derive(Clone)]
pub struct OpenAiClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: OpenAiConfig,
    http: reqwest::Client,
    api_key: Option<String>,
    permits: Semaphore,
    /// The strictest `response_format` this server accepted so far (a `ResponseFormat` level):
    /// once a server rejected json_schema, later calls do not ask again.
    format_level: AtomicU8,
    jitter_seed: AtomicU64,
}

impl std::fmt::Debug for OpenAiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The API key is left out on purpose.
        f.debug_struct("OpenAiClient")
            .field("base_url", &self.inner.config.base_url)
            .field("model", &self.inner.config.model)
            .field("has_api_key", &self.inner.api_key.is_some())
            .finish()
    }
}

/// One failed HTTP attempt, before deciding whether to retry.
struct Failure {
    status: Option<u16>,
    message: String,
    retryable: bool,
    retry_after: Option<Duration>,
}

impl OpenAiClient {
    /// Checks the config and reads the API key from its environment variable (an error when the
    /// variable is named but not set).
    pub fn new(config: OpenAiConfig) -> Result<Self> {
        let url = reqwest::Url::parse(&config.base_url).map_err(|e| {
            StylusError::InvalidArgument(format!("base URL `{}`: {e}", config.base_url))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(StylusError::InvalidArgument(format!(
                "base URL `{}`: only http and https are supported",
                config.base_url
            )));
        }
        if config.model.trim().is_empty() {
            return Err(StylusError::InvalidArgument(
                "the model name is empty".to_string(),
            ));
        }
        if !(config.timeout_secs.is_finite() && config.timeout_secs > 0.0) {
            return Err(StylusError::InvalidArgument(format!(
                "timeout must be a positive number of seconds, got {}",
                config.timeout_secs
            )));
        }
        if !(config.deadline_secs.is_finite() && config.deadline_secs > 0.0) {
            return Err(StylusError::InvalidArgument(format!(
                "deadline must be a positive number of seconds, got {}",
                config.deadline_secs
            )));
        }
        if config.max_concurrency == 0 {
            return Err(StylusError::InvalidArgument(
                "max_concurrency must be at least 1".to_string(),
            ));
        }
        let api_key = match &config.api_key_env {
            None => None,
            Some(var) => match std::env::var(var) {
                Ok(key) if !key.trim().is_empty() => Some(key.trim().to_string()),
                _ => {
                    return Err(StylusError::InvalidArgument(format!(
                        "the API key variable `{var}` is not set (or set api_key_env to none for a \
                         server without keys)"
                    )));
                }
            },
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(config.timeout_secs))
            .build()
            .map_err(|e| StylusError::Http {
                url: config.base_url.clone(),
                status: None,
                message: format!("cannot build the HTTP client: {e}"),
                source: Some(Box::new(e)),
            })?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(Self {
            inner: Arc::new(Inner {
                permits: Semaphore::new(config.max_concurrency),
                config,
                http,
                api_key,
                format_level: AtomicU8::new(ResponseFormat::JsonSchema as u8),
                jitter_seed: AtomicU64::new(seed),
            }),
        })
    }

    pub fn config(&self) -> &OpenAiConfig {
        &self.inner.config
    }

    pub fn model(&self) -> &str {
        &self.inner.config.model
    }

    /// `model at base_url`, for error messages.
    pub fn service(&self) -> String {
        format!(
            "{} at {}",
            self.inner.config.model, self.inner.config.base_url
        )
    }

    /// The full URL of an endpoint (`chat/completions`, `embeddings`).
    pub fn endpoint_url(&self, endpoint: &str) -> String {
        format!(
            "{}/{}",
            self.inner.config.base_url.trim_end_matches('/'),
            endpoint.trim_start_matches('/')
        )
    }

    /// One chat completion. With a schema, the reply is asked for as strict JSON (see the module
    /// docs for the fallbacks); the content is returned as text, not yet parsed.
    pub async fn chat(&self, request: &ChatRequest) -> Result<ChatReply> {
        self.chat_until(request, self.deadline()).await
    }

    /// When a call starting now must give up.
    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs_f64(self.inner.config.deadline_secs)
    }

    async fn chat_until(&self, request: &ChatRequest, until: Instant) -> Result<ChatReply> {
        let url = self.endpoint_url("chat/completions");
        let mut format = match &request.schema {
            None => ResponseFormat::Text,
            Some(_) => ResponseFormat::from_level(self.inner.format_level.load(Ordering::Relaxed)),
        };
        loop {
            let body = self.chat_body(request, format);
            match self.post_json_until(&url, &body, until).await {
                Ok(reply) => {
                    if request.schema.is_some() {
                        self.inner
                            .format_level
                            .fetch_max(format as u8, Ordering::Relaxed);
                    }
                    return self.chat_reply(&url, &reply, format);
                }
                Err(StylusError::Http {
                    status: Some(400),
                    message,
                    ..
                }) if format.plainer().is_some() => {
                    // Servers that do not know a response_format answer 400; ask more plainly.
                    let plainer = format.plainer().unwrap_or(ResponseFormat::Text);
                    tracing::debug!(
                        "{url}: response_format {format:?} rejected ({message}); trying {plainer:?}"
                    );
                    format = plainer;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn chat_body(&self, request: &ChatRequest, format: ResponseFormat) -> Value {
        let mut body = json!({
            "model": self.inner.config.model,
            "messages": request.messages,
        });
        if let Some(t) = request.temperature {
            body["temperature"] = json!(t);
        }
        match (&request.schema, format) {
            (Some(schema), ResponseFormat::JsonSchema) => {
                body["response_format"] = json!({
                    "type": "json_schema",
                    "json_schema": {"name": schema.name, "strict": true, "schema": schema.schema},
                });
            }
            (Some(_), ResponseFormat::JsonObject) => {
                body["response_format"] = json!({"type": "json_object"});
            }
            _ => {}
        }
        body
    }

    fn chat_reply(&self, url: &str, reply: &Value, format: ResponseFormat) -> Result<ChatReply> {
        let choice = &reply["choices"][0];
        let message = &choice["message"];
        if let Some(refusal) = message["refusal"].as_str().filter(|r| !r.is_empty()) {
            return Err(self.model_reply(1, format!("the model refused: {refusal}")));
        }
        let content = message["content"].as_str().ok_or_else(|| {
            self.model_reply(
                1,
                format!("{url}: the reply has no choices[0].message.content text"),
            )
        })?;
        Ok(ChatReply {
            content: content.to_string(),
            format,
            finish_reason: choice["finish_reason"].as_str().map(str::to_string),
        })
    }

    /// Asks until `validate` accepts the reply, at most `reply_attempts` times (at least once).
    /// A reply that is no JSON, or that `validate` rejects, is sent back with the reason and the
    /// model is asked again. HTTP errors (after the client's retries) end the call at once; a
    /// model that never answers usably gives [`StylusError::ModelReply`] with the last reason.
    pub async fn chat_json<T>(
        &self,
        request: &ChatRequest,
        reply_attempts: u32,
        mut validate: impl FnMut(Value) -> std::result::Result<T, String>,
    ) -> Result<JsonReply<T>> {
        let reply_attempts = reply_attempts.max(1);
        let until = self.deadline();
        let mut request = request.clone();
        let mut last_error = String::new();
        for attempt in 1..=reply_attempts {
            if attempt > 1 && Instant::now() >= until {
                return Err(self.model_reply(
                    attempt - 1,
                    format!(
                        "{last_error} (deadline of {} s reached)",
                        self.inner.config.deadline_secs
                    ),
                ));
            }
            let content = match self.chat_until(&request, until).await {
                Ok(reply) => reply.content,
                Err(StylusError::ModelReply { message, .. }) => {
                    last_error = message;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match parse_json_reply(&content).and_then(&mut validate) {
                Ok(value) => {
                    request.messages.push(ChatMessage::assistant(content));
                    return Ok(JsonReply {
                        value,
                        messages: request.messages,
                        attempts: attempt,
                    });
                }
                Err(reason) => {
                    tracing::debug!("{}: unusable reply ({reason})", self.service());
                    request.messages.push(ChatMessage::assistant(truncate_chars(
                        &content,
                        MAX_ECHOED_REPLY_CHARS,
                    )));
                    request.messages.push(ChatMessage::user(format!(
                        "That reply cannot be used: {reason}. Answer again with only the JSON \
                         object described above, and nothing else."
                    )));
                    last_error = reason;
                }
            }
        }
        Err(self.model_reply(reply_attempts, last_error))
    }

    /// Embeddings of `inputs`, in order, `batch_size` texts per request. The vectors are returned
    /// as the server sent them (not normalized).
    pub async fn embeddings(&self, inputs: &[String], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        let url = self.endpoint_url("embeddings");
        let mut out = Vec::with_capacity(inputs.len());
        for batch in inputs.chunks(batch_size.max(1)) {
            let body = json!({
                "model": self.inner.config.model,
                "input": batch,
                "encoding_format": "float",
            });
            let reply = self.post_json(&url, &body).await?;
            out.extend(self.embedding_batch(&reply, batch.len())?);
        }
        Ok(out)
    }

    fn embedding_batch(&self, reply: &Value, expected: usize) -> Result<Vec<Vec<f32>>> {
        let data = reply["data"]
            .as_array()
            .ok_or_else(|| self.model_reply(1, "the embeddings reply has no `data` array"))?;
        if data.len() != expected {
            return Err(self.model_reply(
                1,
                format!("asked for {expected} embeddings, got {}", data.len()),
            ));
        }
        let mut vectors: Vec<Option<Vec<f32>>> = vec![None; expected];
        for (position, item) in data.iter().enumerate() {
            // `index` is optional in some servers; without it the order is the input order.
            let index = item["index"].as_u64().map_or(position, |i| i as usize);
            let numbers = item["embedding"].as_array().ok_or_else(|| {
                self.model_reply(1, format!("embedding {index}: no `embedding` array"))
            })?;
            let vector = numbers
                .iter()
                .map(|n| n.as_f64().map(|x| x as f32))
                .collect::<Option<Vec<f32>>>()
                .ok_or_else(|| {
                    self.model_reply(1, format!("embedding {index}: a value is not a number"))
                })?;
            match vectors.get_mut(index) {
                Some(slot @ None) => *slot = Some(vector),
                _ => {
                    return Err(self.model_reply(
                        1,
                        format!("embedding index {index} is out of range or repeated"),
                    ));
                }
            }
        }
        // Every slot is filled: `expected` distinct in-range indices were seen.
        Ok(vectors.into_iter().flatten().collect())
    }

    fn model_reply(&self, attempts: u32, message: impl Into<String>) -> StylusError {
        StylusError::ModelReply {
            service: self.service(),
            attempts,
            message: message.into(),
        }
    }

    /// POSTs `body` and returns the JSON reply, retrying transient failures.
    async fn post_json(&self, url: &str, body: &Value) -> Result<Value> {
        self.post_json_until(url, body, self.deadline()).await
    }

    /// [`Self::post_json`], giving up at `until`: each attempt is cut to the time left, a retry
    /// that could not start before it is not made. While an attempt waits, a progress line is
    /// logged every [`PROGRESS_EVERY`].
    async fn post_json_until(&self, url: &str, body: &Value, until: Instant) -> Result<Value> {
        let config = &self.inner.config;
        let started = Instant::now();
        let attempts = config.max_retries + 1;
        let mut attempt = 0u32;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let outcome = {
                let _permit = self
                    .inner
                    .permits
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                let call = tokio::time::timeout(left, self.post_once(url, body));
                tokio::pin!(call);
                let every = Duration::from_secs_f64(config.timeout_secs / 3.0)
                    .clamp(Duration::from_secs(1), PROGRESS_EVERY);
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    tokio::select! {
                        done = &mut call => break done,
                        _ = ticks.tick() => tracing::info!(
                            "waiting for {url}: {:.0} s so far (attempt {} of {attempts}, \
                             {:.0} s timeout each, giving up after {:.0} s)",
                            started.elapsed().as_secs_f64(),
                            attempt + 1,
                            config.timeout_secs,
                            config.deadline_secs
                        ),
                    }
                }
            };
            let failure = match outcome {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(failure)) => failure,
                Err(_) => Failure {
                    status: None,
                    message: format!("no reply within the deadline of {} s", config.deadline_secs),
                    retryable: false,
                    retry_after: None,
                },
            };
            let give_up = |message: String| {
                let message = if attempt > 0 {
                    format!("{message} (after {} attempts)", attempt + 1)
                } else {
                    message
                };
                Err(StylusError::Http {
                    url: url.to_string(),
                    status: failure.status,
                    message,
                    source: None,
                })
            };
            if !failure.retryable || attempt >= config.max_retries {
                return give_up(failure.message.clone());
            }
            let delay = match failure.retry_after {
                Some(wait) => wait.min(Duration::from_millis(config.max_retry_after_ms)),
                None => self.backoff(attempt),
            };
            if Instant::now() + delay >= until {
                return give_up(format!(
                    "{}; no time left for a retry within the deadline of {} s",
                    failure.message, config.deadline_secs
                ));
            }
            tracing::debug!(
                "{url}: {} - retry {} in {delay:?}",
                failure.message,
                attempt + 1
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn post_once(&self, url: &str, body: &Value) -> std::result::Result<Value, Failure> {
        let mut request = self.inner.http.post(url).json(body);
        if let Some(key) = &self.inner.api_key {
            request = request.bearer_auth(key);
        }
        let transport = |e: reqwest::Error| Failure {
            status: None,
            message: if e.is_timeout() {
                format!("timed out after {} s", self.inner.config.timeout_secs)
            } else {
                format!("request failed: {e}")
            },
            retryable: !e.is_builder(),
            retry_after: None,
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let text = response.text().await.map_err(transport)?;
        if !(200..300).contains(&status) {
            return Err(Failure {
                status: Some(status),
                message: error_message(&text),
                retryable: status == 429 || status == 408 || status >= 500,
                retry_after,
            });
        }
        serde_json::from_str(&text).map_err(|e| Failure {
            status: Some(status),
            message: format!(
                "the reply is not JSON ({e}): {}",
                truncate_chars(&text, MAX_ERROR_BODY_CHARS)
            ),
            retryable: false,
            retry_after: None,
        })
    }

    /// Exponential backoff with jitter: a uniform draw in [1/2, 1] of `initial x 2^attempt`,
    /// capped, so that clients throttled together do not retry together.
    fn backoff(&self, attempt: u32) -> Duration {
        let config = &self.inner.config;
        let full = config
            .initial_backoff_ms
            .saturating_mul(1u64 << attempt.min(30))
            .min(config.max_backoff_ms);
        let seed = self
            .inner
            .jitter_seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        let fraction = 0.5 + 0.5 * SplitMix64::new(seed).next_f64();
        Duration::from_secs_f64(full as f64 * fraction / 1000.0)
    }
}

/// The wait a server asks for: `retry-after-ms` (OpenAI) or `Retry-After` in seconds. The HTTP-date
/// form of `Retry-After` is ignored (the regular backoff applies then).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let number = |name: &str| -> Option<f64> {
        let value: f64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
        (value.is_finite() && value >= 0.0).then_some(value)
    };
    number("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| number("retry-after").map(Duration::from_secs_f64))
}

/// The server's own error text (`{"error": {"message": ...}}` or `{"error": "..."}`), else the body.
fn error_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let from_json = parsed.as_ref().and_then(|v| {
        v["error"]["message"]
            .as_str()
            .or_else(|| v["error"].as_str())
            .or_else(|| v["message"].as_str())
            .map(str::to_string)
    });
    truncate_chars(
        from_json.as_deref().unwrap_or(body.trim()),
        MAX_ERROR_BODY_CHARS,
    )
}

/// Parses a model's JSON reply, tolerating what models wrap around it: a Markdown code fence, or
/// prose before and after one object.
pub fn parse_json_reply(text: &str) -> std::result::Result<Value, String> {
    let trimmed = text.trim();
    let direct = serde_json::from_str::<Value>(trimmed);
    if let Ok(value) = direct {
        return Ok(value);
    }
    let unfenced = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|rest| rest.trim_end().strip_suffix("```"));
    if let Some(Ok(value)) = unfenced.map(|t| serde_json::from_str::<Value>(t.trim())) {
        return Ok(value);
    }
    if let (Some(start), Some(end)) = (trimmed.find('{'), trimmed.rfind('}'))
        && start < end
        && let Ok(value) = serde_json::from_str::<Value>(&trimmed[start..=end])
    {
        return Ok(value);
    }
    let error = direct.err().map(|e| e.to_string()).unwrap_or_default();
    Err(format!(
        "the reply is not valid JSON ({error}): {}",
        truncate_chars(trimmed, 200)
    ))
}

/// `text` cut to at most `max` characters (on a character boundary), with `...` when cut.
pub fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((cut, _)) => format!("{}...", &text[..cut]),
    }
}

#[cfg(test)]
mod tests;
