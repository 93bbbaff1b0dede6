//! `stylus eval`: retrieval quality and prompt segmentation on development sets.

use std::path::PathBuf;

use clap::Subcommand;
use stylus_core::{StylusConfig, StylusError};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: Eval,
}

#[derive(Debug, Subcommand)]
pub enum Eval {
    /// Query with each card's sample prompt; report recall@1/10/150 and MRR of its card.
    Retrieval(RetrievalArgs),
    /// Compare our topics with the reference composer's topics (Parti prompts).
    Segmentation(SegmentationArgs),
}

#[derive(Debug, clap::Args)]
pub struct RetrievalArgs {
    /// Civitai cards (JSONL files or directories).
    #[arg(long, value_name = "FILE|DIR", required = true)]
    pub civitai: Vec<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct SegmentationArgs {
    /// parti_prompts.csv with the reference `ranked_adapters` column.
    #[arg(long, value_name = "FILE")]
    pub parti: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, _config: &StylusConfig) -> Result<(), StylusError> {
    match args.what {
        Eval::Retrieval(_) => super::not_implemented("stylus eval retrieval"),
        Eval::Segmentation(_) => super::not_implemented("stylus eval segmentation"),
    }
}
