//! Stylus core: the domain types, the pipeline traits and the [`Stylus`] pipeline.
//!
//! Stylus (arXiv 2404.18928) picks LoRA adapters for a prompt in four stages: a *refiner* turns
//! adapter model cards into documents, a *retriever* finds the top-K documents for the prompt's
//! embedding, a *composer* splits the prompt into topics and assigns adapters to them, and a
//! *masker* turns the assignment into per-image adapter subsets. A *merger* and a *sampler* then
//! render images. This crate knows no backend: every stage is a trait (see [`traits`]) that the
//! backend crates (`stylus-refiner`, `stylus-retriever`, `stylus-composer`, `stylus-diffusion`)
//! or your application implement.

pub mod blocking;
pub mod card;
pub mod config;
pub mod error;
pub mod generation;
pub mod hf_cache;
pub mod ids;
#[cfg(feature = "openai")]
pub mod openai;
pub mod pipeline;
pub mod plan;
pub mod rng;
pub mod selection;
pub mod text;
pub mod traits;

pub use card::{AdapterCard, AdapterDoc, AdapterFile, AdapterStats, Category};
pub use config::{
    CacheConfig, CatalogConfig, ComposerConfig, HnswConfig, MaskConfig, NetworkConfig,
    RetrievalMode, RetrieverConfig, StylusConfig,
};
pub use error::{BoxError, MissingAdapter, Result, StylusError};
pub use generation::{
    AdapterMergeStats, ExplicitLora, GeneratedImage, Generation, GenerationRequest, ImageBytes,
    InitImage, InpaintMask, MergeReport, ResizeMode, ResolvedAdapter, SAMPLER_NAMES, SampleJob,
    SamplerKind, SamplingParams, in_range, limits,
};
pub use ids::{AdapterId, BaseModel};
pub use pipeline::{SelectOptions, Stylus, StylusBuilder, strip_lora_tags};
pub use plan::{PlanMask, PlanTopic, PromptBuilder, SelectionPlan, Timings, format_weight};
pub use selection::{
    Candidate, Composition, Evidence, ExplainedCandidate, Mask, MaskStrategy, Query,
    RetrievalFilter, Topic, TopicAdapters, WeightPolicy, WeightedAdapter, reciprocal_rank_fusion,
};
pub use traits::{
    AdapterLocator, Composer, Embedder, LocatedFile, Masker, Merger, PostingLists, Refiner,
    Retriever, Sampler, SearchIndex,
};
