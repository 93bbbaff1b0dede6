//! Stylus composer: stages 3 and 4 of Stylus.
//!
//! - [`masker`]: the paper's mask strategies (`all`, `one_hot_loras`, `one_hot_concepts`).
//!
//! Weights and prompts are built by `stylus_core::WeightPolicy` and `stylus_core::PromptBuilder`.

pub mod masker;

pub use masker::{MAX_ENUMERATED_MASKS, StrategyMasker};
