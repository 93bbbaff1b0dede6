//! `stylus merge`: bake weighted LoRAs into a checkpoint.

use std::path::PathBuf;

use stylus_core::{StylusConfig, StylusError};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Base checkpoint: a diffusers folder or a single-file .safetensors.
    #[arg(long, value_name = "PATH")]
    pub base: PathBuf,
    /// A LoRA to merge, `FILE[:WEIGHT]` (repeatable; weight defaults to 1).
    #[arg(long, value_name = "FILE[:W]", required = true)]
    pub lora: Vec<String>,
    /// Text-encoder multiplier (default: the same as each LoRA's weight).
    #[arg(long)]
    pub te_weight: Option<f32>,
    /// Output, in the same layout as the base (a folder or one .safetensors).
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
}

pub fn run(_args: Args, _config: &StylusConfig) -> Result<(), StylusError> {
    super::not_implemented("stylus merge")
}
