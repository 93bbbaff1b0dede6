//! The Stylus configuration: a TOML file whose defaults are the paper's.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{MaskStrategy, PromptBuilder, Result, SamplingParams, StylusError, WeightPolicy};

/// All settings of the pipeline. Every field has a default, so a partial TOML file is fine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StylusConfig {
    pub catalog: CatalogConfig,
    pub retriever: RetrieverConfig,
    pub composer: ComposerConfig,
    pub weights: WeightPolicy,
    pub prompt: PromptBuilder,
    pub masks: MaskConfig,
    pub sampling: SamplingParams,
    pub network: NetworkConfig,
    pub cache: CacheConfig,
}

/// The adapter cache of `stylus fetch` / `generate --fetch`. Precedence, highest first: the CLI
/// flags (`--cache-dir`, `--cache-max-gb`), the environment (`STYLUS_ADAPTER_CACHE`,
/// `STYLUS_CACHE_MAX_GB`), this `[cache]` table, the defaults (`~/.cache/stylus/adapters`, 20 GB).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// The cache folder.
    pub dir: Option<std::path::PathBuf>,
    /// The size limit in GB; least recently used files are evicted beyond it.
    pub max_gb: Option<f64>,
}

impl CacheConfig {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(gb) = self.max_gb
            && !(gb.is_finite() && gb > 0.0)
        {
            return Err(format!(
                "cache.max_gb = {gb}: must be a positive number of GB"
            ));
        }
        Ok(())
    }
}

/// Timeouts and retries of every network client (the LLM composer, the VLM refiner, the OpenAI
/// embedder, the Civitai fetch). Unset values keep each client's defaults. Precedence, highest
/// first: the CLI flags (`--timeout`, `--retries`, `--deadline`, `--reply-attempts`), the
/// environment (`STYLUS_{LLM,VLM,EMBED,CIVITAI}_TIMEOUT` / `_RETRIES` / `_DEADLINE` /
/// `_REPLY_ATTEMPTS`, then `STYLUS_TIMEOUT`, `STYLUS_RETRIES`, `STYLUS_DEADLINE`,
/// `STYLUS_REPLY_ATTEMPTS` for all), this `[network]` table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Limit of one HTTP request, in seconds.
    pub timeout_secs: Option<f64>,
    /// Retries after the first attempt of a request (transient failures only).
    pub retries: Option<u32>,
    /// Limit of one call over all its attempts and backoffs, in seconds.
    pub deadline_secs: Option<f64>,
    /// Chat models (LLM composer, VLM refiner): how many times one question is asked while the
    /// replies are unusable (not JSON, failing validation), re-asking with the problem each
    /// time; in [`Self::REPLY_ATTEMPTS`] (default 3).
    pub reply_attempts: Option<u32>,
}

impl NetworkConfig {
    /// Upper bound of `retries`.
    pub const MAX_RETRIES: u32 = 100;
    /// Allowed values of `reply_attempts`.
    pub const REPLY_ATTEMPTS: std::ops::RangeInclusive<u32> = 1..=20;

    /// Each value of `self`, else `other`'s.
    pub fn or(self, other: Self) -> Self {
        Self {
            timeout_secs: self.timeout_secs.or(other.timeout_secs),
            retries: self.retries.or(other.retries),
            deadline_secs: self.deadline_secs.or(other.deadline_secs),
            reply_attempts: self.reply_attempts.or(other.reply_attempts),
        }
    }

    /// The values set in the environment for `role` (`LLM`, `VLM`, `EMBED`, `CIVITAI`), read
    /// through `var`; a value that is not a valid number is an error naming the variable.
    pub fn from_vars(
        role: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, StylusError> {
        let read = |suffix: &str| {
            [
                format!("STYLUS_{role}_{suffix}"),
                format!("STYLUS_{suffix}"),
            ]
            .into_iter()
            .find_map(|name| {
                var(&name)
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| (name, v))
            })
        };
        let bad = |name: &str, value: &str, what: &str| {
            StylusError::InvalidArgument(format!("{name}={value}: {what}"))
        };
        let seconds = |suffix: &str| -> Result<Option<f64>, StylusError> {
            match read(suffix) {
                None => Ok(None),
                Some((name, value)) => match value.trim().parse::<f64>() {
                    Ok(v) if v.is_finite() && v > 0.0 => Ok(Some(v)),
                    _ => Err(bad(&name, &value, "expected a positive number of seconds")),
                },
            }
        };
        let count = |suffix: &str,
                     range: std::ops::RangeInclusive<u32>|
         -> Result<Option<u32>, StylusError> {
            match read(suffix) {
                None => Ok(None),
                Some((name, value)) => match value.trim().parse::<u32>() {
                    Ok(v) if range.contains(&v) => Ok(Some(v)),
                    _ => Err(bad(
                        &name,
                        &value,
                        &format!(
                            "expected a whole number in {}..={}",
                            range.start(),
                            range.end()
                        ),
                    )),
                },
            }
        };
        Ok(Self {
            timeout_secs: seconds("TIMEOUT")?,
            retries: count("RETRIES", 0..=Self::MAX_RETRIES)?,
            deadline_secs: seconds("DEADLINE")?,
            reply_attempts: count("REPLY_ATTEMPTS", Self::REPLY_ATTEMPTS)?,
        })
    }

    /// [`Self::from_vars`] over the process environment.
    pub fn from_env(role: &str) -> Result<Self, StylusError> {
        Self::from_vars(role, |name| std::env::var(name).ok())
    }

    /// Checks the values (positive finite seconds, retries within [`Self::MAX_RETRIES`]).
    pub fn validate(&self) -> Result<(), String> {
        for (key, value) in [
            ("timeout_secs", self.timeout_secs),
            ("deadline_secs", self.deadline_secs),
        ] {
            if let Some(v) = value
                && !(v.is_finite() && v > 0.0)
            {
                return Err(format!(
                    "network.{key} = {v}: must be a positive number of seconds"
                ));
            }
        }
        if let Some(r) = self.retries
            && r > Self::MAX_RETRIES
        {
            return Err(format!(
                "network.retries = {r}: must be in 0..={}",
                Self::MAX_RETRIES
            ));
        }
        if let Some(n) = self.reply_attempts
            && !Self::REPLY_ATTEMPTS.contains(&n)
        {
            return Err(format!(
                "network.reply_attempts = {n}: must be in {}..={}",
                Self::REPLY_ATTEMPTS.start(),
                Self::REPLY_ATTEMPTS.end()
            ));
        }
        Ok(())
    }
}

impl StylusConfig {
    /// Reads a TOML file; unknown keys and wrong types are errors naming the file.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| StylusError::io(path, e))?;
        let config = Self::from_toml_str(&text).map_err(|message| StylusError::Config {
            path: path.to_path_buf(),
            message,
            source: None,
        })?;
        config.validate().map_err(|message| StylusError::Config {
            path: path.to_path_buf(),
            message,
            source: None,
        })?;
        Ok(config)
    }

    /// Checks the numeric settings against [`crate::limits`]; the message names the key and the
    /// allowed range.
    pub fn validate(&self) -> Result<(), String> {
        let top_k = crate::limits::TOP_K;
        if !top_k.contains(&self.retriever.top_k) {
            return Err(format!(
                "retriever.top_k = {}: must be in {}..={}",
                self.retriever.top_k,
                top_k.start(),
                top_k.end()
            ));
        }
        if self.retriever.topic_k > *top_k.end() {
            return Err(format!(
                "retriever.topic_k = {}: must be in 0..={}",
                self.retriever.topic_k,
                top_k.end()
            ));
        }
        self.network.validate()?;
        self.cache.validate()?;
        self.sampling.validate().map_err(|e| {
            // The sampling table's keys, not the CLI flags.
            let text = e.to_string();
            let text = text.trim_start_matches("invalid argument: ");
            format!(
                "[sampling] {}",
                text.replace("--cfg", "guidance_scale")
                    .replace("--clip-skip", "clip_skip")
                    .replace("--", "")
            )
        })
    }

    /// Parses TOML text; the error is the parser's message (with line and column).
    pub fn from_toml_str(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    pub fn to_toml_string(&self) -> String {
        toml::to_string_pretty(self).expect("the config is always representable in TOML")
    }
}

/// Which catalog cards are indexed (the paper's filters, each a switch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogConfig {
    /// Catalog types kept (Civitai `type`); the paper keeps `LORA` only.
    pub adapter_types: Vec<String>,
    pub allow_nsfw: bool,
    /// Require a version whose base model is SD 1.5 (the paper) with a `.safetensors` file.
    pub require_sd15_safetensors: bool,
    /// Drop adapters with at most this many sample images (the paper: 2); `None` keeps all.
    pub max_images_dropped: Option<usize>,
    /// Drop titles containing any of these words, case-insensitive (the paper: slider, table rpg).
    pub blocked_title_words: Vec<String>,
    /// Drop cards tagged `character` / `celebrity` (or flagged as real people) at index time.
    pub drop_characters: bool,
    /// Civitai model ids never indexed.
    pub blocked_ids: Vec<u64>,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            adapter_types: vec!["LORA".to_string()],
            allow_nsfw: false,
            require_sd15_safetensors: true,
            max_images_dropped: None,
            blocked_title_words: Vec::new(),
            drop_characters: false,
            blocked_ids: Vec::new(),
        }
    }
}

/// Retrieval settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrieverConfig {
    /// Candidates handed to the composer (the paper: 150).
    pub top_k: usize,
    /// Which ranking picks the candidates (default: auto, see [`RetrievalMode`]).
    pub mode: RetrievalMode,
    /// Candidates retrieved for each of the composer's topics
    /// ([`crate::Composer::topic_queries`]) and fused with the whole prompt's ranking; 0 searches
    /// with the whole prompt only.
    pub topic_k: usize,
    /// Weight of the topics' rankings in that fusion, shared equally among them (the whole
    /// prompt's has weight 1): a tag soup cut into many topics must not outvote its own
    /// precise ranking.
    pub topic_weight: f32,
    pub hnsw: HnswConfig,
}

impl Default for RetrieverConfig {
    fn default() -> Self {
        Self {
            top_k: 150,
            mode: RetrievalMode::Auto,
            topic_k: 30,
            topic_weight: 1.0,
            hnsw: HnswConfig::default(),
        }
    }
}

/// Which ranking picks the candidates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetrievalMode {
    /// Cosine similarity of the embeddings (HNSW or exact scan).
    Dense,
    /// BM25 over the documents' words; dense results only fill the list when fewer than K
    /// documents share a word with the prompt.
    Bm25,
    /// Both rankings fused by reciprocal rank fusion.
    Hybrid,
    /// The default, picked from the Civitai development set (docs/benchmarks.md, Retrieval):
    /// `bm25` when the store's vectors are lexical (hashed TF-IDF is a second, weaker word
    /// ranking: fusing it lowers recall@150 from 0.662 to 0.645), `hybrid` when they come from a
    /// semantic embedder (MiniLM + BM25 has the best recall@150, 0.671, and recall@10).
    #[default]
    Auto,
}

/// HNSW graph parameters, tuned for top-150 recall.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HnswConfig {
    /// Links per node (M).
    pub max_connections: usize,
    pub ef_construction: usize,
    /// Search breadth; at least top_k.
    pub ef_search: usize,
}

impl Default for HnswConfig {
    fn default() -> Self {
        Self {
            max_connections: 24,
            ef_construction: 200,
            ef_search: 300,
        }
    }
}

/// Composer rules (the paper's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComposerConfig {
    /// At most this many adapters per topic: the paper's ceiling, 3. A ceiling, not a target:
    /// the local composer's relevance thresholds decide how many a topic gets (0.7 per topic on
    /// the PartiPrompts development set; docs/benchmarks.md, Selection).
    pub max_adapters_per_topic: usize,
    /// At most this many style adapters in the whole composition (the paper: 2).
    pub max_style_adapters: usize,
    /// At most this many adapters in the whole composition: every adapter costs image quality
    /// (3: the best F1 of the measured budgets with the relevance thresholds refitted for each,
    /// 1.4 adapters per prompt on average; docs/benchmarks.md, Selection).
    pub max_adapters: usize,
    /// Characters and celebrities only when the prompt asks for one (the paper: blocked).
    pub block_characters: bool,
}

impl Default for ComposerConfig {
    fn default() -> Self {
        Self {
            max_adapters_per_topic: 3,
            max_style_adapters: 2,
            max_adapters: 3,
            block_characters: true,
        }
    }
}

/// Mask settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaskConfig {
    pub strategy: MaskStrategy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_papers_and_round_trip_through_toml() {
        let config = StylusConfig::default();
        assert_eq!(config.retriever.top_k, 150);
        assert_eq!(config.composer.max_adapters_per_topic, 3);
        assert_eq!(config.composer.max_adapters, 3);
        assert_eq!(config.composer.max_style_adapters, 2);
        assert!(config.composer.block_characters);
        assert_eq!(config.weights.base, 0.8);
        assert_eq!(config.prompt.debias, "realistic, best quality");
        assert_eq!(config.masks.strategy, MaskStrategy::OneHotLoras);
        assert_eq!(config.sampling.steps, 35);
        assert_eq!(config.sampling.guidance_scale, 5.0);
        assert_eq!(config.sampling.sampler, "dpmpp_2m_karras");
        assert_eq!((config.sampling.width, config.sampling.height), (512, 512));

        let text = config.to_toml_string();
        assert_eq!(StylusConfig::from_toml_str(&text).unwrap(), config);
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let config = StylusConfig::from_toml_str("[retriever]\ntop_k = 20\n").unwrap();
        assert_eq!(config.retriever.top_k, 20);
        assert_eq!(config.retriever.mode, RetrievalMode::Auto);
        let bm25 = StylusConfig::from_toml_str("[retriever]\nmode = \"bm25\"\n").unwrap();
        assert_eq!(bm25.retriever.mode, RetrievalMode::Bm25);
        let err = StylusConfig::from_toml_str("[retriever]\nmode = \"sparse\"\n").unwrap_err();
        assert!(err.contains("sparse") && err.contains("hybrid"), "{err}");
        assert_eq!(config.retriever.hnsw, HnswConfig::default());
        assert_eq!(config.composer, ComposerConfig::default());
    }

    #[test]
    fn the_cache_table_is_read_and_checked() {
        let config =
            StylusConfig::from_toml_str("[cache]\ndir = \"/data/loras\"\nmax_gb = 2.5\n").unwrap();
        assert_eq!(config.cache.dir.as_deref(), Some(Path::new("/data/loras")));
        assert_eq!(config.cache.max_gb, Some(2.5));
        for bad in ["max_gb = 0", "max_gb = -3", "max_gb = nan", "size = 3"] {
            let err = StylusConfig::from_toml_str(&format!("[cache]\n{bad}\n"))
                .and_then(|c| c.validate())
                .unwrap_err();
            assert!(
                err.contains("cache") || err.contains("size"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn unknown_key_and_bad_type_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stylus.toml");
        std::fs::write(&path, "[retriever]\ntop_kk = 3\n").unwrap();
        let err = StylusConfig::from_toml_file(&path).unwrap_err().to_string();
        assert!(err.contains("stylus.toml"), "{err}");
        assert!(err.contains("top_kk"), "{err}");

        std::fs::write(&path, "[composer]\nmax_adapters_per_topic = \"three\"\n").unwrap();
        let err = StylusConfig::from_toml_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("stylus.toml") && err.contains("line 2"),
            "{err}"
        );
    }
}
