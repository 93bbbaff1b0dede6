//! stylus-diffusion: Stable Diffusion 1.5 in burn.
//!
//! - [`backend`]: the CPU backend ([`backend::CpuBackend`], burn-flex) and GPU device helpers.
//! - [`models`]: the CLIP text encoder, the UNet and the VAE, named like diffusers' modules.
//! - [`checkpoint`]: [`StableDiffusion::load`] for diffusers folders and single-file checkpoints.
pub mod backend;
pub mod checkpoint;
pub mod clip_tokenizer;
pub mod image_input;
pub mod lora;
pub mod models;
pub mod png;
pub mod prompt_weights;
pub mod sampler;
pub mod schedulers;

/// The burn version the networks are built with, so callers name the same tensor types.
pub use burn;
pub use checkpoint::{Component, ComponentReport, LoadReport, SdConfig, StableDiffusion};
