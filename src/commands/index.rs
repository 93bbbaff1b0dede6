//! `stylus index`: catalog -> refined, embedded StylusDocs store.

use std::path::PathBuf;

use stylus_core::{StylusConfig, StylusError};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Civitai model JSON: a JSON array, a paged `{items, metadata}` response or JSONL; files or
    /// directories.
    #[arg(long, value_name = "FILE|DIR")]
    pub civitai: Vec<PathBuf>,
    /// A folder of LoRA files (safetensors metadata and sidecar files are read).
    #[arg(long, value_name = "DIR")]
    pub lora_dir: Option<PathBuf>,
    /// Output directory of the StylusDocs store.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Embedder: `lexical` (no weights), `bert[:DIR]` (MiniLM-class model) or `openai`.
    #[arg(long, default_value = "lexical")]
    pub embedder: String,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(_args: Args, _config: &StylusConfig) -> Result<(), StylusError> {
    super::not_implemented("stylus index")
}
