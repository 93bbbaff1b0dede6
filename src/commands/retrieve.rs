//! `stylus retrieve`: top-K adapters for prompts.

use std::path::PathBuf;

use stylus_core::{StylusConfig, StylusError};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// StylusDocs store directory (default: the bundled catalog).
    #[arg(long, value_name = "DIR")]
    pub index: Option<PathBuf>,
    /// Number of adapters per query (default: the config's top_k, 150).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// A file with one query per line.
    #[arg(long, value_name = "FILE", conflicts_with = "prompt")]
    pub queries: Option<PathBuf>,
    /// Print one JSON line per query.
    #[arg(long)]
    pub json: bool,
    /// The prompt.
    pub prompt: Option<String>,
}

pub fn run(_args: Args, _config: &StylusConfig) -> Result<(), StylusError> {
    super::not_implemented("stylus retrieve")
}
