//! The configuration files of a sentence-transformers BERT model directory: `config.json` (the
//! transformers model), `sentence_bert_config.json` (maximum sequence length, lowercasing),
//! `modules.json` (the module pipeline) and `1_Pooling/config.json` (the pooling mode).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use stylus_core::{Result, StylusError};

/// The transformers `config.json` of a BERT encoder; only the fields the encoder needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    /// Width of every hidden state (384 for MiniLM-L6 and bge-small).
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads per layer; divides `hidden_size`.
    pub num_attention_heads: usize,
    /// Width of the feed-forward block.
    pub intermediate_size: usize,
    /// Rows of the position embedding table: the longest input the model accepts.
    pub max_position_embeddings: usize,
    /// Rows of the word embedding table.
    pub vocab_size: usize,
    /// Rows of the token type (segment) embedding table.
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    /// Epsilon of every LayerNorm.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Activation of the feed-forward block; only `gelu` (the exact, erf-based GELU) is supported.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// Only `absolute` position embeddings are supported.
    #[serde(default = "default_position_embedding_type")]
    pub position_embedding_type: String,
    /// `bert` when present.
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_type_vocab_size() -> usize {
    2
}

fn default_layer_norm_eps() -> f64 {
    1e-12
}

fn default_hidden_act() -> String {
    "gelu".to_owned()
}

fn default_position_embedding_type() -> String {
    "absolute".to_owned()
}

impl BertConfig {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: BertConfig = read_json(path)?;
        config.validate(path)?;
        Ok(config)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let unsupported = |message: String| {
            Err(StylusError::UnsupportedFormat {
                path: path.to_owned(),
                message,
            })
        };
        if let Some(model_type) = &self.model_type
            && model_type != "bert"
        {
            return unsupported(format!("model_type `{model_type}` is not `bert`"));
        }
        if self.hidden_act != "gelu" {
            return unsupported(format!(
                "hidden_act `{}` (only the exact `gelu` is supported)",
                self.hidden_act
            ));
        }
        if self.position_embedding_type != "absolute" {
            return unsupported(format!(
                "position_embedding_type `{}` (only `absolute` is supported)",
                self.position_embedding_type
            ));
        }
        let sizes = [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("vocab_size", self.vocab_size),
            ("type_vocab_size", self.type_vocab_size),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, value)| *value == 0) {
            return Err(StylusError::Config {
                path: path.to_owned(),
                message: format!("`{name}` must be positive"),
                source: None,
            });
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(StylusError::Config {
                path: path.to_owned(),
                message: format!(
                    "hidden_size {} is not a multiple of num_attention_heads {}",
                    self.hidden_size, self.num_attention_heads
                ),
                source: None,
            });
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(StylusError::Config {
                path: path.to_owned(),
                message: format!("layer_norm_eps {} must be positive", self.layer_norm_eps),
                source: None,
            });
        }
        Ok(())
    }
}

/// How token states become one sentence vector (sentence-transformers' `Pooling` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the tokens the attention mask keeps (all-MiniLM-L6-v2).
    Mean,
    /// The state of the first token, `[CLS]` (bge models).
    Cls,
}

impl Pooling {
    /// The name used in embedder ids.
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
        }
    }
}

/// Everything sentence-transformers adds around the transformer: how inputs are prepared and
/// how the output is pooled.
#[derive(Debug, Clone, PartialEq)]
pub struct SentenceConfig {
    /// Longest input in tokens, `[CLS]` and `[SEP]` included; longer inputs are truncated.
    pub max_seq_length: usize,
    /// Lowercase texts before tokenizing (`do_lower_case` of `sentence_bert_config.json`).
    pub do_lower_case: bool,
    /// The pooling mode.
    pub pooling: Pooling,
}

#[derive(Deserialize)]
struct SentenceBertFile {
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

#[derive(Deserialize)]
struct ModuleEntry {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

/// `1_Pooling/config.json`: sentence-transformers >= 6 writes `pooling_mode` (a name or a list
/// of names); older versions one `pooling_mode_<name>` flag per mode.
#[derive(Deserialize)]
struct PoolingFile {
    pooling_mode: Option<PoolingModes>,
    #[serde(flatten)]
    flags: std::collections::BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PoolingModes {
    One(String),
    Many(Vec<String>),
}

impl PoolingFile {
    /// The enabled mode names (`cls`, `mean`, `max`, ...).
    fn modes(self) -> Vec<String> {
        match self.pooling_mode {
            Some(PoolingModes::One(mode)) => vec![mode],
            Some(PoolingModes::Many(modes)) => modes,
            None => self
                .flags
                .into_iter()
                .filter(|(_, on)| on.as_bool() == Some(true))
                .filter_map(|(key, _)| {
                    let mode = key.strip_prefix("pooling_mode_")?;
                    // The legacy flag names of the modes the new format calls `cls` and `mean`.
                    Some(match mode {
                        "cls_token" => "cls".to_owned(),
                        "mean_tokens" => "mean".to_owned(),
                        other => other.to_owned(),
                    })
                })
                .collect(),
        }
    }
}

#[derive(Deserialize)]
struct TokenizerConfigFile {
    model_max_length: Option<f64>,
}

impl SentenceConfig {
    /// Reads the sentence-transformers files of `dir`. A plain transformers directory (none of
    /// them present) gets sentence-transformers' defaults: mean pooling and the shorter of the
    /// tokenizer's `model_max_length` and the position table.
    pub fn from_dir(dir: &Path, model: &BertConfig) -> Result<Self> {
        let pooling = read_pooling(dir)?;

        let sentence_file = dir.join("sentence_bert_config.json");
        let sentence: Option<SentenceBertFile> = read_json_if_exists(&sentence_file)?;
        let tokenizer_config: Option<TokenizerConfigFile> =
            read_json_if_exists(&dir.join("tokenizer_config.json"))?;

        let requested = match sentence.as_ref().and_then(|s| s.max_seq_length) {
            Some(length) => length,
            // transformers writes a huge sentinel (1e30) for "no limit".
            None => tokenizer_config
                .and_then(|t| t.model_max_length)
                .filter(|length| *length >= 1.0 && *length < 1e9)
                .map_or(model.max_position_embeddings, |length| length as usize),
        };
        if requested < 2 {
            return Err(StylusError::Config {
                path: sentence_file,
                message: format!("max_seq_length {requested} leaves no room for [CLS] and [SEP]"),
                source: None,
            });
        }
        Ok(SentenceConfig {
            max_seq_length: requested.min(model.max_position_embeddings),
            do_lower_case: sentence.is_some_and(|s| s.do_lower_case),
            pooling,
        })
    }
}

/// The pooling mode named by `modules.json` (default `1_Pooling`), refusing pipelines with
/// modules we do not run (a `Dense` projection would otherwise be silently skipped).
fn read_pooling(dir: &Path) -> Result<Pooling> {
    let modules_file = dir.join("modules.json");
    let modules: Option<Vec<ModuleEntry>> = read_json_if_exists(&modules_file)?;
    let mut pooling_dir = None;
    if let Some(modules) = modules {
        for module in modules {
            match module.kind.rsplit('.').next().unwrap_or_default() {
                "Transformer" | "Normalize" => {}
                "Pooling" => pooling_dir = Some(dir.join(&module.path)),
                other => {
                    return Err(StylusError::UnsupportedFormat {
                        path: modules_file,
                        message: format!(
                            "sentence-transformers module `{other}` (at `{}`) is not supported; \
                             only Transformer, Pooling and Normalize are",
                            module.path
                        ),
                    });
                }
            }
        }
    }
    let pooling_file = pooling_dir
        .unwrap_or_else(|| dir.join("1_Pooling"))
        .join("config.json");
    let Some(file): Option<PoolingFile> = read_json_if_exists(&pooling_file)? else {
        return Ok(Pooling::Mean);
    };
    let modes = file.modes();
    match modes
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["cls"] => Ok(Pooling::Cls),
        ["mean"] => Ok(Pooling::Mean),
        other => Err(StylusError::UnsupportedFormat {
            path: pooling_file,
            message: format!(
                "pooling modes {other:?}: exactly one of `cls` or `mean` is supported"
            ),
        }),
    }
}

/// Parses a JSON file into `T`, with the line of a syntax or shape error.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| StylusError::io(path, e))?;
    parse_json(path, &bytes)
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StylusError::Json {
        path: PathBuf::from(path),
        line: Some(e.line()),
        message: e.to_string(),
        source: Some(Box::new(e)),
    })
}

fn read_json_if_exists<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => parse_json(path, &bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StylusError::io(path, e)),
    }
}
