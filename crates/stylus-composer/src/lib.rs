//! Stylus composer: stages 3 and 4 of Stylus.
//!
//! - [`local`]: [`LocalComposer`], the offline deterministic composer;
//! - [`segment`]: cuts a prompt into keyword topics (rule-based, offline);
//! - [`relevance`]: the model that decides whether a candidate that fits a topic is wanted;
//! - [`people`]: the one rule both composers apply to characters, celebrities and real people;
//! - [`masker`]: the paper's mask strategies (`all`, `one_hot_loras`, `one_hot_concepts`);
//! - [`segmentation_eval`]: our topics against the reference composer's (PartiPrompts).
//!
//! Weights and prompts are built by `stylus_core::WeightPolicy` and `stylus_core::PromptBuilder`.

#[cfg(feature = "llm")]
pub mod llm;
pub mod local;
pub mod masker;
pub mod people;
pub mod relevance;
pub mod segment;
pub mod segmentation_eval;

pub use local::{DEFAULT_MIN_SCORE, Fit, LocalComposer};
pub use masker::{MAX_ENUMERATED_MASKS, StrategyMasker};
pub use relevance::Evidence;
pub use segment::{Segment, SegmentKind, is_tag_list, segment};
pub use segmentation_eval::{
    Prf, ReferenceRow, ReferenceTopic, SegmentationReport, evaluate_segmentation, read_parti_csv,
};
