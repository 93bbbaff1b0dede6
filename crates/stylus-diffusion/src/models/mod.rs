//! The three SD 1.x networks, with struct fields named like the diffusers/transformers modules
//! so that state dicts load by name (see [`crate::checkpoint`]).
//!
//! - [`clip::ClipTextModel`]: token ids `[b, 77]` -> hidden states `[b, 77, 768]`.
//! - [`unet::UNet2DConditionModel`]: `(latents, timestep, context)` -> noise prediction.
//! - [`vae::AutoencoderKL`]: latents <-> images.
//!
//! Every model is built from its config with `Config::init(device)`; parameters are lazily
//! initialized, so building a model and then loading a checkpoint never computes random weights.

pub mod attention;
pub mod clip;
pub mod fused;
pub mod parameters;
pub mod resnet;
pub mod unet;
pub mod vae;
