//! `stylus eval`: retrieval quality and prompt segmentation on development sets.

use std::path::PathBuf;

use clap::Subcommand;
use stylus_core::{StylusConfig, StylusError};

mod retrieval;
mod segmentation;
mod selection;

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
    /// Compare our retrieval and selection with the reference composer's picks (Parti prompts),
    /// with the baselines in the same run.
    Selection(SelectionArgs),
}

#[derive(Debug, clap::Args)]
pub struct SelectionArgs {
    /// parti_prompts.csv with the reference `ranked_adapters` column.
    #[arg(long, value_name = "FILE")]
    pub parti: PathBuf,
    /// The StylusDocs store to select from (e.g. `stylus index --civitai ../shared/data/civitai`).
    #[arg(long, value_name = "DIR")]
    pub index: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write one JSON line per comparable prompt (reference, our topics and picks, ranks).
    #[arg(long, value_name = "FILE")]
    pub details: Option<PathBuf>,
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
    /// Write one JSON line per query: whether it is a tag list, where its card lands in plain
    /// BM25 and in the pipeline, and the first titles of each.
    #[arg(long, value_name = "FILE")]
    pub details: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct SegmentationArgs {
    /// parti_prompts.csv with the reference `ranked_adapters` column.
    #[arg(long, value_name = "FILE")]
    pub parti: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write one JSON line per scored prompt: the prompt, the reference topics and ours.
    #[arg(long, value_name = "FILE")]
    pub details: Option<PathBuf>,
}

pub fn run(args: Args, config: &StylusConfig) -> Result<(), StylusError> {
    match args.what {
        Eval::Retrieval(args) => retrieval::run(&args, config),
        Eval::Segmentation(args) => segmentation::run(&args),
        Eval::Selection(args) => selection::run(&args, config),
    }
}
