//! LoRA and LyCORIS adapters: parsing every common file format into one normalized form,
//! computing weight deltas, and merging weighted adapter sets into the SD 1.x UNet and text
//! encoder without touching the base weights.
//!
//! - [`targets`]: the modules an adapter can change, enumerated from our model tree, and every
//!   name files use for them.
//! - [`file`]: validated safetensors reading.
//! - [`parse`]: files -> [`LoraAdapter`] (kohya LoRA/LoCon, LyCORIS LoHa/LoKr/full/IA3, DoRA,
//!   PEFT and diffusers keys, SGM/LDM-named kohya keys).
//! - [`base_model`]: refusing adapters for SDXL / SD 2 / DiT models.
//! - [`delta`]: the f32 math per algorithm.
//! - [`merge`]: a weighted adapter set applied to base weights, target by target.
//! - [`bake`]: `stylus merge`, LoRAs baked into a checkpoint file by tensor name.
//! - [`info`]: `stylus info`, describing adapters and checkpoints.
//! - [`merger`]: [`LoraMerger`], the non-destructive `stylus_core::Merger` over burn models.

pub mod adapter;
pub mod bake;
pub mod base_model;
pub mod delta;
pub mod file;
pub mod info;
pub mod merge;
pub mod merger;
pub mod parse;
pub mod targets;

pub use adapter::{AdapterKind, AdapterModule, Dora, DoraAxis, Factor, KronFactor, LoraAdapter};
pub use base_model::{BaseModelGuess, check_base_model, guess_base_model};
pub use file::TensorFile;
pub use merge::{MergedWeight, ScaledAdapter, merge_targets};
pub use merger::{ActiveModels, AdapterStrength, LoraMerger, MergeCacheStats};
pub use parse::{ParseOptions, load_adapter, parse_adapter};
pub use targets::{LayerKind, Network, TargetModule, TargetTable};
