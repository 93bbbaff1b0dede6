//! [`BertEmbedder`]: sentence embeddings from a MiniLM-class BERT model (all-MiniLM-L6-v2,
//! bge-small, ...) in burn, computed the way sentence-transformers computes them: tokenize with
//! the model's `tokenizer.json` (truncated to `max_seq_length`), run the encoder, pool (mean over
//! the attention mask or `[CLS]`, from `1_Pooling/config.json`) and L2-normalize.
//!
//! A model directory holds `config.json`, `model.safetensors` and `tokenizer.json`, plus the
//! optional sentence-transformers files (`sentence_bert_config.json`, `modules.json`,
//! `1_Pooling/config.json`). It can be a plain directory or a snapshot in the Hugging Face hub
//! cache. `tools/fetch-minilm.sh` installs all-MiniLM-L6-v2 at [`default_minilm_dir`].

mod config;
mod model;
mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use stylus_core::{Embedder, Result, StylusError};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

pub use config::{BertConfig, Pooling, SentenceConfig};
pub use model::BertModel;
pub use stylus_core::hf_cache::{hf_hub_cache_dir, hf_snapshot_dir};

use weights::WeightFile;

/// The CPU backend the embedder runs on by default.
pub type CpuBackend = burn::backend::Flex<f32>;

/// Texts per forward pass unless [`BertEmbedder::with_batch_size`] says otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 32;

/// Environment variable naming the all-MiniLM-L6-v2 directory (tests, benches, the CLI default).
pub const MINILM_DIR_ENV: &str = "STYLUS_MINILM_DIR";

/// Where all-MiniLM-L6-v2 lives on this machine: `$STYLUS_MINILM_DIR`, else
/// `$HOME/.cache/stylus/models/all-MiniLM-L6-v2` (where `tools/fetch-minilm.sh` unpacks it).
/// The directory may not exist; `None` only when neither variable is set.
pub fn default_minilm_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(MINILM_DIR_ENV).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").filter(|v| !v.is_empty())?;
    Some(PathBuf::from(home).join(".cache/stylus/models/all-MiniLM-L6-v2"))
}

/// Checks that `dir` holds a model (`config.json`, `model.safetensors`, `tokenizer.json`); the
/// error says how to get one.
pub fn check_model_dir(dir: &Path) -> Result<()> {
    let missing: Vec<&str> = ["config.json", "model.safetensors", "tokenizer.json"]
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(StylusError::Model {
        path: dir.to_owned(),
        message: format!(
            "no sentence-transformers model here ({} missing). Get all-MiniLM-L6-v2 with \
             `tools/fetch-minilm.sh` (installs it in ~/.cache/stylus/models), or give \
             --embedder bert:DIR / bert:ORG/NAME (a Hugging Face cache entry), or set {}",
            missing.join(", "),
            MINILM_DIR_ENV
        ),
    })
}

/// A sentence-transformers BERT model as an [`Embedder`]. Cloning is cheap (the model is shared).
#[derive(Debug)]
pub struct BertEmbedder<B: Backend = CpuBackend> {
    inner: Arc<Loaded<B>>,
    batch_size: usize,
}

impl<B: Backend> Clone for BertEmbedder<B> {
    fn clone(&self) -> Self {
        BertEmbedder {
            inner: Arc::clone(&self.inner),
            batch_size: self.batch_size,
        }
    }
}

#[derive(Debug)]
struct Loaded<B: Backend> {
    model: BertModel<B>,
    tokenizer: Tokenizer,
    sentence: SentenceConfig,
    device: B::Device,
    dir: PathBuf,
    id: String,
}

impl BertEmbedder<CpuBackend> {
    /// Loads the model in `dir` on the CPU.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_dir_on(dir, Default::default())
    }

    /// Loads `repo_id` (e.g. `sentence-transformers/all-MiniLM-L6-v2`) from the Hugging Face hub
    /// cache ([`hf_hub_cache_dir`]) at revision `main`, on the CPU.
    pub fn from_hf_cache(repo_id: &str) -> Result<Self> {
        let cache = hf_hub_cache_dir().ok_or_else(|| {
            StylusError::InvalidArgument(
                "no Hugging Face cache: set HF_HUB_CACHE, HF_HOME or HOME".to_owned(),
            )
        })?;
        Self::from_dir(hf_snapshot_dir(&cache, repo_id, "main")?)
    }

    /// Loads from `location`: an existing directory, or a repo id (`org/name`) in the Hugging
    /// Face cache. Anything else is treated as a directory, so a mistyped path is reported as such.
    pub fn open(location: &str) -> Result<Self> {
        let path = Path::new(location);
        let looks_like_repo_id =
            !path.is_absolute() && !location.starts_with('.') && location.split('/').count() <= 2;
        if path.is_dir() || !looks_like_repo_id {
            Self::from_dir(path)
        } else {
            Self::from_hf_cache(location)
        }
    }
}

impl<B: Backend> BertEmbedder<B> {
    /// Loads the model in `dir` onto `device` of backend `B`.
    pub fn from_dir_on(dir: impl AsRef<Path>, device: B::Device) -> Result<Self> {
        let dir = dir.as_ref();
        check_model_dir(dir)?;
        let config_bytes =
            std::fs::read(dir.join("config.json")).map_err(|e| StylusError::io(dir, e))?;
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let sentence = SentenceConfig::from_dir(dir, &config)?;
        let tokenizer = load_tokenizer(&dir.join("tokenizer.json"), &config, &sentence)?;

        let weights_path = dir.join("model.safetensors");
        let bytes = read_weights(&weights_path)?;
        let mut weights = WeightFile::parse(&weights_path, &bytes)?;
        let model = BertModel::load(&config, &mut weights, &device)?;
        weights.finish()?;

        let digest = hex::encode(Sha256::digest(&bytes));
        let config_digest = hex::encode(Sha256::digest(&config_bytes));
        // The id names the model, not where it lies: it changes whenever the vectors would
        // (other weights, config, pooling or truncation), and only then, so a store opens
        // wherever the same model is found (a folder, STYLUS_MINILM_DIR, the HF cache).
        let id = format!(
            "bert:{}:{}:sha256-{}:config-{}",
            sentence.pooling.name(),
            sentence.max_seq_length,
            &digest[..12],
            &config_digest[..8]
        );
        Ok(BertEmbedder {
            inner: Arc::new(Loaded {
                model,
                tokenizer,
                sentence,
                device,
                dir: dir.to_owned(),
                id,
            }),
            batch_size: DEFAULT_BATCH_SIZE,
        })
    }

    /// Runs at most `batch_size` texts per forward pass (at least 1).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Texts per forward pass.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Tokenization and pooling settings.
    pub fn sentence_config(&self) -> &SentenceConfig {
        &self.inner.sentence
    }

    /// The encoder.
    pub fn model(&self) -> &BertModel<B> {
        &self.inner.model
    }

    /// The directory the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Embeds `texts` on the calling thread: one L2-normalized vector per text, in order.
    ///
    /// Texts are sorted by token count and cut into batches so that each batch pads to its own
    /// longest text; the result does not depend on the batching.
    pub fn embed_blocking<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<f32>>> {
        let loaded = &*self.inner;
        let inputs: Vec<String> = texts
            .iter()
            .map(|t| {
                let text = t.as_ref();
                if loaded.sentence.do_lower_case {
                    text.to_lowercase()
                } else {
                    text.to_owned()
                }
            })
            .collect();
        let encodings = loaded
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| StylusError::model(loaded.dir.join("tokenizer.json"), e.to_string()))?;

        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].get_ids().len()));
        // Batches run in parallel: much of a forward pass (attention per head, layout copies,
        // GELU) is single-threaded in burn-flex, so one batch alone keeps ~1.1 cores busy.
        let batches: Vec<Vec<Vec<f32>>> = order
            .par_chunks(self.batch_size)
            .map(|chunk| {
                let batch: Vec<&tokenizers::Encoding> =
                    chunk.iter().map(|&i| &encodings[i]).collect();
                self.embed_encodings(&batch)
            })
            .collect::<Result<_>>()?;
        let mut vectors = vec![Vec::new(); encodings.len()];
        for (&i, vector) in order.iter().zip(batches.into_iter().flatten()) {
            vectors[i] = vector;
        }
        Ok(vectors)
    }

    /// Pads one batch to its longest encoding, runs the encoder, pools and normalizes.
    fn embed_encodings(&self, batch: &[&tokenizers::Encoding]) -> Result<Vec<Vec<f32>>> {
        let loaded = &*self.inner;
        let device = &loaded.device;
        let rows = batch.len();
        let seq = batch.iter().map(|e| e.get_ids().len()).max().unwrap_or(0);
        let mut ids = vec![0i32; rows * seq];
        let mut types = vec![0i32; rows * seq];
        let mut keep = vec![0f32; rows * seq];
        let type_vocab_size = loaded.model.config().type_vocab_size;
        for (r, encoding) in batch.iter().enumerate() {
            for (t, (&id, &type_id)) in encoding
                .get_ids()
                .iter()
                .zip(encoding.get_type_ids())
                .enumerate()
            {
                // Ids fit: the tokenizer's vocabulary was checked against the table at load.
                ids[r * seq + t] = id as i32;
                if type_id as usize >= type_vocab_size {
                    return Err(StylusError::model(
                        loaded.dir.join("tokenizer.json"),
                        format!(
                            "token type {type_id} is outside the model's {type_vocab_size} token types"
                        ),
                    ));
                }
                types[r * seq + t] = type_id as i32;
                keep[r * seq + t] = 1.0;
            }
        }
        let padding: Vec<bool> = keep.iter().map(|k| *k == 0.0).collect();
        let input_ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, seq]), device);
        let token_types =
            Tensor::<B, 2, Int>::from_data(TensorData::new(types, [rows, seq]), device);
        let padding =
            Tensor::<B, 2, Bool>::from_data(TensorData::new(padding, [rows, seq]), device);
        let hidden = loaded.model.forward(input_ids, token_types, padding);

        let width = loaded.model.config().hidden_size;
        let pooled = match loaded.sentence.pooling {
            Pooling::Cls => hidden
                .slice([0..rows, 0..1, 0..width])
                .reshape([rows, width]),
            Pooling::Mean => {
                let keep = Tensor::<B, 2>::from_data(TensorData::new(keep, [rows, seq]), device);
                let counts = keep.clone().sum_dim(1).clamp_min(1e-9);
                let summed = (hidden * keep.reshape([rows, seq, 1])).sum_dim(1);
                summed.reshape([rows, width]) / counts
            }
        };
        let norms = pooled
            .clone()
            .powf_scalar(2.0)
            .sum_dim(1)
            .sqrt()
            .clamp_min(1e-12);
        let normalized = pooled / norms;
        let values = normalized.into_data().to_vec::<f32>().map_err(|e| {
            StylusError::model(&loaded.dir, format!("reading embeddings back: {e:?}"))
        })?;
        Ok(values.chunks_exact(width).map(<[f32]>::to_vec).collect())
    }
}

#[async_trait]
impl<B: Backend> Embedder for BertEmbedder<B> {
    fn id(&self) -> String {
        self.inner.id.clone()
    }

    fn dim(&self) -> usize {
        self.inner.model.config().hidden_size
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let this = self.clone();
        let texts = texts.to_vec();
        tokio::task::spawn_blocking(move || this.embed_blocking(&texts))
            .await
            .map_err(|e| {
                StylusError::model(&self.inner.dir, format!("embedding task failed: {e}"))
            })?
    }
}

fn read_weights(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| StylusError::io(path, e))
}

/// Loads `tokenizer.json`, checks its ids fit the embedding table and sets truncation to the
/// model's maximum sequence length (sentence-transformers overrides the file's own settings).
fn load_tokenizer(
    path: &Path,
    config: &BertConfig,
    sentence: &SentenceConfig,
) -> Result<Tokenizer> {
    let bytes = std::fs::read(path).map_err(|e| StylusError::io(path, e))?;
    // Parse once with serde_json first: it names the line of a syntax error.
    serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|e| StylusError::Json {
        path: path.to_owned(),
        line: Some(e.line()),
        message: e.to_string(),
        source: Some(Box::new(e)),
    })?;
    let mut tokenizer = Tokenizer::from_bytes(&bytes).map_err(|e| {
        StylusError::model(path, format!("not a Hugging Face tokenizers file: {e}"))
    })?;
    let vocab = tokenizer.get_vocab_size(true);
    if vocab > config.vocab_size {
        return Err(StylusError::model(
            path,
            format!(
                "{vocab} tokens do not fit the model's {} word embeddings",
                config.vocab_size
            ),
        ));
    }
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: sentence.max_seq_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        }))
        .map_err(|e| StylusError::model(path, format!("setting truncation: {e}")))?;
    tokenizer.with_padding(None);
    Ok(tokenizer)
}

#[cfg(test)]
mod model_dir_tests {
    use super::*;

    #[test]
    fn a_missing_model_explains_how_to_get_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_model_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("tools/fetch-minilm.sh") && err.contains("config.json"),
            "{err}"
        );
    }
}
