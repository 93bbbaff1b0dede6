//! The typed errors of the cache and the downloader. Every download error names the adapter
//! (`id "title" (file name)`), so a user knows which of the plan's files failed and why.

use std::path::PathBuf;

use stylus_core::StylusError;

/// Everything that can go wrong while fetching or caching an adapter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// `--offline` (or `STYLUS_OFFLINE=1`) forbids the network and the file is not cached.
    #[error(
        "adapter {adapter}: not in the LoRA folder or the adapter cache, and the network is off \
         (--offline); download it from {url}"
    )]
    Offline { adapter: String, url: String },

    /// The catalog has no download URL for the adapter.
    #[error("adapter {adapter}: the catalog has no download URL for it")]
    NoDownloadUrl { adapter: String },

    /// The server answered with an error status that is not worth retrying (401, 403, 404, ...),
    /// or retries ran out on a retryable one.
    #[error("adapter {adapter}: {url} answered HTTP {status}{}", hint(*status, body))]
    Http {
        adapter: String,
        url: String,
        status: u16,
        /// The start of the reply body (text only).
        body: String,
    },

    /// The request could not be sent or the connection broke.
    #[error("adapter {adapter}: {url}: network error")]
    Network {
        adapter: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },

    /// No answer, or no bytes for `secs` seconds in the middle of the body.
    #[error("adapter {adapter}: {url}: no data for {secs} s (timeout)")]
    Timeout {
        adapter: String,
        url: String,
        secs: f64,
    },

    /// The body ended before the announced length (the partial file is kept for a resume).
    #[error("adapter {adapter}: {url}: the body ended after {got} of {expected} bytes")]
    Truncated {
        adapter: String,
        url: String,
        got: u64,
        expected: u64,
    },

    /// Retries ran out; the last failure is the source.
    #[error("adapter {adapter}: giving up after {attempts} attempt(s)")]
    RetriesExhausted {
        adapter: String,
        attempts: u32,
        #[source]
        source: Box<FetchError>,
    },

    /// The per-file deadline leaves no time for another attempt; the last failure is the source.
    #[error("adapter {adapter}: deadline of {secs} s reached")]
    Deadline {
        adapter: String,
        secs: f64,
        #[source]
        source: Box<FetchError>,
    },

    /// A 200 reply that is an HTML page (a login wall, a Cloudflare page, a "not found" page).
    #[error("adapter {adapter}: {url} sent an HTML page instead of the file: {snippet:?}")]
    HtmlBody {
        adapter: String,
        url: String,
        snippet: String,
    },

    /// A 200 reply that is a JSON error object (`{"error": "..."}`).
    #[error("adapter {adapter}: {url} sent a JSON reply instead of the file: {message}")]
    JsonBody {
        adapter: String,
        url: String,
        message: String,
    },

    /// A Python pickle (`.ckpt`, `.pt`, `.bin`, `.pth` that are not safetensors): loading it can
    /// execute code, so it never enters the cache.
    #[error(
        "adapter {adapter}: {file_name} is {what}, refused because loading it can run code; use \
         the .safetensors version of the adapter"
    )]
    Pickle {
        adapter: String,
        file_name: String,
        what: &'static str,
    },

    /// The bytes are not a valid safetensors file.
    #[error("adapter {adapter}: the downloaded file is not a valid safetensors file")]
    NotSafetensors {
        adapter: String,
        #[source]
        source: StylusError,
    },

    /// The file is larger than the size cap (announced or counted).
    #[error(
        "adapter {adapter}: the file is {size} bytes, over the cap of {cap} bytes \
         (--max-file-mb / STYLUS_FETCH_MAX_FILE_MB)"
    )]
    TooLarge {
        adapter: String,
        size: u64,
        cap: u64,
    },

    /// The sha256 of the downloaded bytes is not the catalog's; the partial file was deleted.
    #[error(
        "adapter {adapter}: sha256 mismatch: the catalog says {expected}, the download is \
         {actual}; the file was deleted"
    )]
    HashMismatch {
        adapter: String,
        expected: String,
        actual: String,
    },

    /// The LoRA was trained for another base model than SD 1.x.
    #[error("adapter {adapter}: made for {found}, not SD 1.x (evidence: {evidence}); not cached")]
    BaseModelMismatch {
        adapter: String,
        found: String,
        evidence: String,
    },

    /// A file of the cache could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The cache index does not parse.
    #[error("adapter cache index {path}: malformed JSON")]
    Index {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// Several files failed (each error names its adapter).
    #[error("{} adapter file(s) could not be fetched:\n{}", errors.len(), list(errors))]
    Several { errors: Vec<FetchError> },

    /// A hub checkpoint that cannot be had: missing from the repo or the offline cache, not an
    /// SD diffusers repo, or no answer within the deadline.
    #[error("checkpoint {checkpoint}: {message}")]
    Hub { checkpoint: String, message: String },

    /// A request to the Hugging Face hub failed.
    #[error("checkpoint {checkpoint}: {what}: hub request failed")]
    HubRequest {
        checkpoint: String,
        what: String,
        #[source]
        source: Box<hf_hub::api::tokio::ApiError>,
    },

    /// A bad argument (a plan that does not parse, an unknown spec, a bad setting).
    #[error("{0}")]
    InvalidArgument(String),
}

fn list(errors: &[FetchError]) -> String {
    let lines: Vec<String> = errors.iter().map(|e| format!("  {}", chain(e))).collect();
    lines.join("\n")
}

fn hint(status: u16, body: &str) -> String {
    let mut out = String::new();
    if !body.is_empty() {
        out.push_str(&format!(": {body:?}"));
    }
    match status {
        401 | 403 => out.push_str(
            " (this file needs a Civitai account: set CIVITAI_API_KEY to an API key from \
             civitai.com/user/account)",
        ),
        429 => out.push_str(" (rate limited; try again later or lower --jobs)"),
        _ => {}
    }
    out
}

impl FetchError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether another attempt may succeed (rate limits, server errors, timeouts, broken
    /// connections, short bodies).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Http { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            Self::Network { .. } | Self::Timeout { .. } | Self::Truncated { .. } => true,
            _ => false,
        }
    }
}

impl From<FetchError> for StylusError {
    fn from(error: FetchError) -> Self {
        match error {
            FetchError::Io { path, source } => StylusError::Io { path, source },
            FetchError::InvalidArgument(message) => StylusError::InvalidArgument(message),
            FetchError::Hub {
                checkpoint,
                message,
            } => StylusError::Model {
                path: checkpoint.into(),
                message,
            },
            FetchError::HubRequest { ref checkpoint, .. } => StylusError::Http {
                url: checkpoint.clone(),
                status: None,
                message: chain(&error),
                source: Some(Box::new(error)),
            },
            other => {
                // The message keeps the whole chain for those who print only the error.
                let status = match &other {
                    FetchError::Http { status, .. } => Some(*status),
                    _ => None,
                };
                StylusError::Http {
                    url: "adapter download".into(),
                    status,
                    message: chain(&other),
                    source: Some(Box::new(other)),
                }
            }
        }
    }
}

/// `error: cause: cause ...`, the way the CLI prints a chain.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}
