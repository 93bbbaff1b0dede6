//! `stylus eval`: retrieval quality and prompt segmentation on development sets.

use std::path::PathBuf;

use clap::Subcommand;
use stylus_core::{StylusConfig, StylusError};

mod retrieval;
mod segmentation;

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
    /// Skip the MiniLM configurations even when the model is available.
    #[arg(long)]
    pub no_bert: bool,
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

pub fn run(args: Args, config: &StylusConfig) -> Result<(), StylusError> {
    match args.what {
        Eval::Retrieval(args) => retrieval::run(&args, config),
        Eval::Segmentation(args) => segmentation::run(&args),
    }
}
