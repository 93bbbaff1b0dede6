//! `stylus select`: prompt -> topics, adapters, weights, masks, A1111 prompt.

use std::path::PathBuf;

use stylus_core::{StylusConfig, StylusError};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// StylusDocs store directory (default: the bundled catalog).
    #[arg(long, value_name = "DIR")]
    pub index: Option<PathBuf>,
    /// Composer: `local` (offline, deterministic) or `llm` (OpenAI-compatible server).
    #[arg(long, default_value = "local")]
    pub composer: String,
    /// Mask strategy: all, one_hot_loras or one_hot_concepts (default: the config's).
    #[arg(long)]
    pub masks: Option<String>,
    /// Sample this many masks (one per image); default: list every mask.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Seed for mask sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A file with one prompt per line (one JSON line each).
    #[arg(long, value_name = "FILE", conflicts_with = "prompt")]
    pub prompts: Option<PathBuf>,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    /// The prompt.
    pub prompt: Option<String>,
}

pub fn run(_args: Args, _config: &StylusConfig) -> Result<(), StylusError> {
    super::not_implemented("stylus select")
}
