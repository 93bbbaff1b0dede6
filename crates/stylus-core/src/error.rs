//! The one error type of the workspace. Every variant carries the context a user needs to find the
//! problem: the file, the key or tensor, the line, the adapter.

use std::path::PathBuf;

use crate::AdapterId;

/// The cause of an error from another library (a JSON or safetensors parser, an HTTP client, an
/// image decoder), kept for [`std::error::Error::source`] so callers can inspect it (a timeout,
/// a status, a line and column).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used across all Stylus crates.
pub type Result<T, E = StylusError> = std::result::Result<T, E>;

/// Everything that can go wrong in Stylus, with context.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StylusError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A JSON document (or one line of a JSONL file) does not parse or has the wrong shape.
    #[error("{path}{}: malformed JSON: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Json {
        path: PathBuf,
        line: Option<usize>,
        message: String,
        #[source]
        source: Option<BoxError>,
    },

    /// A text data file other than JSON (CSV, a Python literal in a CSV cell, ...) is malformed.
    #[error("{path}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Parse {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },

    /// A configuration file is invalid.
    #[error("config {path}: {message}")]
    Config {
        path: PathBuf,
        message: String,
        #[source]
        source: Option<BoxError>,
    },

    /// A safetensors file is malformed (truncated header, bad offsets, non-UTF-8 metadata, ...).
    #[error("{path}: invalid safetensors file: {message}")]
    Safetensors {
        path: PathBuf,
        message: String,
        #[source]
        source: Option<BoxError>,
    },

    /// A tensor in a weight file is missing, mis-shaped, of the wrong dtype or not finite.
    #[error("{path}: tensor `{key}`: {message}")]
    Tensor {
        path: PathBuf,
        key: String,
        message: String,
    },

    /// A model file does not fit what we expected (wrong architecture, missing weights, ...).
    #[error("{path}: {message}")]
    Model { path: PathBuf, message: String },

    /// An input image (img2img init image, inpainting mask) cannot be read or used: unreadable,
    /// truncated, too large, or of the wrong size.
    #[error("image {path}: {message}")]
    Image {
        path: PathBuf,
        message: String,
        #[source]
        source: Option<BoxError>,
    },

    /// A file format we refuse or do not know (pickle checkpoints, legacy LoRA layouts, ...).
    #[error("{path}: unsupported format: {message}")]
    UnsupportedFormat { path: PathBuf, message: String },

    /// Something is wrong with one adapter (no file, wrong base model, bad weight, ...).
    #[error("adapter {id}: {message}")]
    Adapter { id: AdapterId, message: String },

    /// The StylusDocs store or an index on disk is corrupt, truncated or from another embedder.
    #[error("store {path}: {message}")]
    Store { path: PathBuf, message: String },

    /// An HTTP call failed (after retries, where they apply).
    #[error("HTTP {url}: {message}{}", status.map(|s| format!(" (status {s})")).unwrap_or_default())]
    Http {
        url: String,
        status: Option<u16>,
        message: String,
        #[source]
        source: Option<BoxError>,
    },

    /// A language or vision model answered, but never with something we can use.
    #[error("{service}: unusable reply after {attempts} attempt(s): {message}")]
    ModelReply {
        service: String,
        attempts: u32,
        message: String,
    },

    /// A vector has the wrong dimension for the index or embedder it meets.
    #[error("dimension mismatch: {what} expects {expected}, got {got}")]
    Dimension {
        what: String,
        expected: usize,
        got: usize,
    },

    /// A caller passed an invalid argument (K = 0, a width that is not a multiple of 8, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The requested compute device or dtype is not available on this machine or build.
    #[error("device unavailable: {0}")]
    Device(String),

    /// A pipeline stage needed for this call was not configured (e.g. `generate` without a sampler).
    #[error("pipeline is missing its {0}; configure it with the builder")]
    MissingStage(&'static str),

    /// The caller stopped the work (an interrupt, a closed connection, a passed deadline).
    #[error("cancelled: {0}")]
    Cancelled(String),

    /// Selected adapters whose files the locator did not find: every one of them, found before
    /// any compute starts, so the user downloads them in one go.
    #[error(
        "{} selected adapter file(s) not found in the LoRA folder; download them first:\n{}",
        adapters.len(),
        adapters.iter().map(|a| format!("  {a}")).collect::<Vec<_>>().join("\n")
    )]
    MissingAdapters { adapters: Vec<MissingAdapter> },
}

/// One adapter file to download (see [`StylusError::MissingAdapters`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MissingAdapter {
    pub id: AdapterId,
    pub title: String,
    /// The catalog's file name, else the A1111 alias.
    pub file: String,
    pub download_url: Option<String>,
}

impl std::fmt::Display for MissingAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} \"{}\": {} ({})",
            self.id,
            self.title,
            self.file,
            self.download_url
                .as_deref()
                .unwrap_or("no download URL in the catalog")
        )
    }
}

impl StylusError {
    /// An I/O error for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// An error about one adapter.
    pub fn adapter(id: &AdapterId, message: impl Into<String>) -> Self {
        Self::Adapter {
            id: id.clone(),
            message: message.into(),
        }
    }

    /// An error about one tensor of a weight file.
    pub fn tensor(
        path: impl Into<PathBuf>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Tensor {
            path: path.into(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// An error about a model file as a whole.
    pub fn model(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Model {
            path: path.into(),
            message: message.into(),
        }
    }

    /// An error about an input image.
    pub fn image(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Image {
            path: path.into(),
            message: message.into(),
            source: None,
        }
    }

    /// An error about the on-disk store.
    pub fn store(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Store {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The process exit code the CLI uses for this error: 2 for usage problems and a pipeline
    /// missing a stage, 3 for adapter files to download first ([`Self::MissingAdapters`]), 1 for
    /// everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::InvalidArgument(_) | Self::MissingStage(_) => 2,
            Self::MissingAdapters { .. } => 3,
            _ => 1,
        }
    }
}
