//! Stylus as a library: automatic LoRA selection and composition for Stable Diffusion 1.5.
//!
//! This crate is the facade over the workspace (as ripgrep's `grep` crate is for `rg`): one call
//! opens what `stylus select --index DIR` opens (a StylusDocs store or the bundled catalog, its
//! embedder, the search the config's `retriever.mode` asks for, the configured composer and mask
//! strategy) and gives back a [`Stylus`] pipeline. The `stylus` command line, the examples and
//! the benches go through it.
//!
//! ```no_run
//! # async fn run() -> stylus::Result<()> {
//! let config = stylus::StylusConfig::default();
//! let stylus = stylus::Stylus::open(stylus::Source::Bundled, &config)?;
//! let plan = stylus.select("a corgi wearing a cowboy hat, watercolor").await?;
//! println!("{}", plan.a1111_prompt);
//! # Ok(())
//! # }
//! ```
//!
//! Builder options ([`Stylus::options`]) choose the composer, the mask strategy, the retrieval
//! filter, and for `generate` the adapter locator and the sampler ([`render::load_sampler`]
//! loads an SD 1.5 checkpoint on a [`render::Device`]).
//!
//! Cargo features: `llm` (the LLM composer and every OpenAI-compatible client), `bert` (stores
//! embedded with MiniLM), `serve` (the HTTP service, [`serve`]), `cuda` and `wgpu` (GPU
//! backends). The default is `llm` + `bert` + `serve` on CPU; the `stylus` binary needs all
//! three.

pub mod catalog;
pub mod render;
#[cfg(feature = "serve")]
pub mod serve;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use stylus_composer as composer;
pub use stylus_core as core;
pub use stylus_diffusion as diffusion;
pub use stylus_refiner as refiner;
pub use stylus_retriever as retriever;

pub use catalog::Catalog;
pub use stylus_core::{
    AdapterLocator, Composer, Embedder, Generation, GenerationRequest, ImageBytes, InitImage,
    InpaintMask, MaskStrategy, NetworkConfig, ResizeMode, Result, RetrievalFilter, Retriever,
    Sampler, SearchIndex, SelectOptions, SelectionPlan, StylusConfig, StylusError,
};

use stylus_composer::{LocalComposer, StrategyMasker};

/// Which catalog a pipeline searches.
#[derive(Debug, Clone)]
pub enum Source {
    /// The default catalog compiled into the library (a few hundred invented cards; offline).
    Bundled,
    /// A StylusDocs store directory (`stylus index` writes one).
    Store(PathBuf),
    /// A catalog built in memory ([`Catalog::from_parts`]).
    Catalog(Catalog),
}

impl From<&Path> for Source {
    fn from(dir: &Path) -> Self {
        Self::Store(dir.to_path_buf())
    }
}

impl From<PathBuf> for Source {
    fn from(dir: PathBuf) -> Self {
        Self::Store(dir)
    }
}

impl From<&PathBuf> for Source {
    fn from(dir: &PathBuf) -> Self {
        Self::Store(dir.clone())
    }
}

/// `Some(dir)`: that store; `None`: the bundled catalog (what `--index` means on the CLI).
impl<P: Into<PathBuf>> From<Option<P>> for Source {
    fn from(dir: Option<P>) -> Self {
        dir.map_or(Self::Bundled, |d| Self::Store(d.into()))
    }
}

impl From<Catalog> for Source {
    fn from(catalog: Catalog) -> Self {
        Self::Catalog(catalog)
    }
}

/// The composer that assigns candidates to topics.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[value(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum ComposerKind {
    /// Offline and deterministic (`stylus_composer::LocalComposer`).
    #[default]
    Local,
    /// An OpenAI-compatible chat server (feature `llm`; `STYLUS_LLM_BASE_URL`,
    /// `STYLUS_LLM_MODEL`, `STYLUS_LLM_API_KEY`).
    Llm,
}

/// A [`stylus_core::Stylus`] pipeline over an opened catalog. Dereferences to the pipeline:
/// `select`, `select_with`, `retrieve`, `generate`, `generate_with_plan`.
pub struct Stylus {
    pipeline: stylus_core::Stylus,
    catalog: Catalog,
    masks: MaskStrategy,
}

impl std::fmt::Debug for Stylus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stylus")
            .field("pipeline", &self.pipeline)
            .field("catalog", &self.catalog)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for Stylus {
    type Target = stylus_core::Stylus;
    fn deref(&self) -> &stylus_core::Stylus {
        &self.pipeline
    }
}

impl Stylus {
    /// Opens `source` (a store directory, [`Source::Bundled`], or `Option<dir>`) with the
    /// config's composer settings and mask strategy: what `stylus select --index DIR` runs.
    pub fn open(source: impl Into<Source>, config: &StylusConfig) -> Result<Self> {
        Self::options().open(source, config)
    }

    /// Builder options for [`OpenOptions::open`].
    pub fn options() -> OpenOptions {
        OpenOptions::default()
    }

    /// The pipeline itself.
    pub fn pipeline(&self) -> &stylus_core::Stylus {
        &self.pipeline
    }

    /// The catalog searched (embedder, index, documents, open time).
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Milliseconds opening the catalog took.
    pub fn open_ms(&self) -> f64 {
        self.catalog.open_ms
    }

    /// The mask strategy in use.
    pub fn mask_strategy(&self) -> MaskStrategy {
        self.masks
    }

    pub fn into_pipeline(self) -> stylus_core::Stylus {
        self.pipeline
    }
}

/// How [`Stylus::open`] builds the pipeline. Every option has the CLI's default.
#[derive(Default)]
pub struct OpenOptions {
    composer: ComposerKind,
    custom_composer: Option<Arc<dyn Composer>>,
    retriever: Option<Arc<dyn Retriever>>,
    masks: Option<MaskStrategy>,
    filter: Option<RetrievalFilter>,
    network: Option<NetworkConfig>,
    build_hnsw: bool,
    locator: Option<Arc<dyn AdapterLocator>>,
    sampler: Option<Arc<dyn Sampler>>,
}

impl std::fmt::Debug for OpenOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOptions")
            .field("composer", &self.composer)
            .field("masks", &self.masks)
            .field("build_hnsw", &self.build_hnsw)
            .field("generates", &self.sampler.is_some())
            .finish_non_exhaustive()
    }
}

impl OpenOptions {
    /// The composer (default [`ComposerKind::Local`], with the catalog's embedder).
    pub fn composer(mut self, kind: ComposerKind) -> Self {
        self.composer = kind;
        self
    }
    /// Your own composer instead of a built-in one.
    pub fn custom_composer(mut self, composer: Arc<dyn Composer>) -> Self {
        self.custom_composer = Some(composer);
        self
    }
    /// Your own retriever (a vector database, a service) over the catalog's documents and
    /// embedder, instead of the catalog's in-process index.
    pub fn retriever(mut self, retriever: Arc<dyn Retriever>) -> Self {
        self.retriever = Some(retriever);
        self
    }
    /// The mask strategy (default: the config's `masks.strategy`).
    pub fn mask_strategy(mut self, strategy: MaskStrategy) -> Self {
        self.masks = Some(strategy);
        self
    }
    /// The retrieval filter (default: no nsfw unless the config allows it, SD 1.x only).
    pub fn filter(mut self, filter: RetrievalFilter) -> Self {
        self.filter = Some(filter);
        self
    }
    /// Network limits of the LLM composer, over the environment's and the config's.
    pub fn network(mut self, network: NetworkConfig) -> Self {
        self.network = Some(network);
        self
    }
    /// Builds a dense store's HNSW index, saves it into the store and uses it.
    pub fn build_hnsw(mut self, build: bool) -> Self {
        self.build_hnsw = build;
        self
    }
    /// Finds selected adapters' files (needed by `generate` with selection).
    pub fn locator(mut self, locator: Arc<dyn AdapterLocator>) -> Self {
        self.locator = Some(locator);
        self
    }
    /// Renders images (needed by `generate`); see [`render::load_sampler`].
    pub fn sampler(mut self, sampler: Arc<dyn Sampler>) -> Self {
        self.sampler = Some(sampler);
        self
    }

    /// Opens the catalog and builds the pipeline. Everything the options name is checked before
    /// the catalog is read (an LLM composer without its feature, say).
    pub fn open(self, source: impl Into<Source>, config: &StylusConfig) -> Result<Stylus> {
        #[cfg(not(feature = "llm"))]
        if self.custom_composer.is_none() && self.composer == ComposerKind::Llm {
            return Err(StylusError::InvalidArgument(
                "the LLM composer needs the `llm` feature of the stylus crate".into(),
            ));
        }
        let catalog = match source.into() {
            Source::Bundled => catalog::open(None, config, self.build_hnsw)?,
            Source::Store(dir) => catalog::open(Some(&dir), config, self.build_hnsw)?,
            Source::Catalog(catalog) => catalog,
        };
        let composer: Arc<dyn Composer> = match (self.custom_composer, self.composer) {
            (Some(composer), _) => composer,
            (None, ComposerKind::Local) => Arc::new(
                LocalComposer::new(config.composer.clone()).with_embedder(catalog.embedder.clone()),
            ),
            #[cfg(feature = "llm")]
            (None, ComposerKind::Llm) => Arc::new(llm_composer(config, self.network)?),
            #[cfg(not(feature = "llm"))]
            (None, ComposerKind::Llm) => unreachable!("checked above"),
        };
        let masks = self.masks.unwrap_or(config.masks.strategy);
        let retriever = self
            .retriever
            .unwrap_or_else(|| stylus_core::traits::retriever(catalog.index.clone()));
        let mut builder = stylus_core::Stylus::builder()
            .config(config.clone())
            .embedder(catalog.embedder.clone())
            .retriever(retriever)
            .composer(composer)
            .masker(Arc::new(StrategyMasker::new(masks)));
        if let Some(filter) = self.filter {
            builder = builder.filter(filter);
        }
        if let Some(locator) = self.locator {
            builder = builder.locator(locator);
        }
        if let Some(sampler) = self.sampler {
            builder = builder.sampler(sampler);
        }
        Ok(Stylus {
            pipeline: builder.build()?,
            catalog,
            masks,
        })
    }
}

/// The LLM composer configured from the environment (`STYLUS_LLM_*`, then `OPENAI_*`).
#[cfg(feature = "llm")]
fn llm_composer(
    config: &StylusConfig,
    network: Option<NetworkConfig>,
) -> Result<stylus_composer::llm::LlmComposer> {
    use stylus_composer::llm::{LlmComposer, LlmComposerConfig};
    use stylus_core::openai::{OpenAiClient, OpenAiConfig};
    let network = network
        .unwrap_or_default()
        .or(NetworkConfig::from_env("LLM")?)
        .or(config.network);
    let client =
        OpenAiClient::new(OpenAiConfig::from_env("LLM", "gpt-4o-mini").with_network(&network))?;
    Ok(LlmComposer::new(
        client,
        LlmComposerConfig {
            rules: config.composer.clone(),
            reply_attempts: network
                .reply_attempts
                .unwrap_or(LlmComposerConfig::default().reply_attempts),
            ..LlmComposerConfig::default()
        },
    ))
}
