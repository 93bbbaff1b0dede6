//! `stylus retrieve`: top-K adapters for prompts.
//!
//! Opens a StylusDocs store (or the bundled catalog), embeds each query with the store's embedder
//! and searches as `retriever.mode` says (see `catalog`); `--build-hnsw` makes the store's HNSW
//! index and registers it in the store.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use stylus_core::{Candidate, Query, RetrievalFilter, StylusConfig, StylusError};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// StylusDocs store directory (default: the bundled catalog).
    #[arg(long, value_name = "DIR")]
    pub index: Option<PathBuf>,
    /// Number of adapters per query, 1..=100000 (default: the config's top_k, 150); at most the
    /// store's size come back.
    #[arg(long, value_parser = super::usize_in(stylus_core::limits::TOP_K))]
    pub top_k: Option<usize>,
    /// A file with one query per line.
    #[arg(long, value_name = "FILE", conflicts_with = "prompt")]
    pub queries: Option<PathBuf>,
    /// Print one JSON line per query.
    #[arg(long)]
    pub json: bool,
    /// Build the store's HNSW index (config `retriever.hnsw`), save it into the store (covered by
    /// the store manifest's checksums) and use it.
    #[arg(long)]
    pub build_hnsw: bool,
    /// The prompt.
    pub prompt: Option<String>,
}

pub fn run(args: Args, config: &StylusConfig) -> Result<(), StylusError> {
    let queries = read_queries(&args)?;
    let k = args.top_k.unwrap_or(config.retriever.top_k);
    let catalog = super::catalog::open(args.index.as_deref(), config, args.build_hnsw)?;
    let vectors = super::runtime()?.block_on(catalog.embedder.embed(&queries))?;
    let filter = RetrievalFilter::default();
    let mut out = std::io::stdout().lock();
    for (query, vector) in queries.iter().zip(&vectors) {
        let results = catalog
            .retriever
            .retrieve(Query::new(query, vector), k, &filter)?;
        let written = if args.json {
            writeln!(out, "{}", json_line(query, &results))
        } else {
            print_table(&mut out, query, &results)
        };
        written.map_err(|e| StylusError::io("<stdout>", e))?;
    }
    Ok(())
}

/// The queries: one per non-empty line of `--queries`, or the prompt.
fn read_queries(args: &Args) -> Result<Vec<String>, StylusError> {
    let queries: Vec<String> = match (&args.queries, &args.prompt) {
        (Some(path), _) => {
            let file = std::fs::File::open(path).map_err(|e| StylusError::io(path, e))?;
            let mut lines = Vec::new();
            for line in std::io::BufReader::new(file).lines() {
                let line = line.map_err(|e| StylusError::io(path, e))?;
                if !line.trim().is_empty() {
                    lines.push(line.trim().to_string());
                }
            }
            lines
        }
        (None, Some(prompt)) if !prompt.trim().is_empty() => vec![prompt.trim().to_string()],
        _ => {
            return Err(StylusError::InvalidArgument(
                "give a prompt or --queries FILE".into(),
            ));
        }
    };
    if queries.is_empty() {
        return Err(StylusError::InvalidArgument(
            "the queries file has no queries".into(),
        ));
    }
    Ok(queries)
}

fn json_line(query: &str, results: &[Candidate]) -> String {
    let results: Vec<serde_json::Value> = results
        .iter()
        .map(|c| {
            serde_json::json!({
                "id": c.doc.id(),
                "score": c.score,
                "title": c.doc.card.title,
            })
        })
        .collect();
    serde_json::json!({ "query": query, "results": results }).to_string()
}

fn print_table(out: &mut impl Write, query: &str, results: &[Candidate]) -> std::io::Result<()> {
    writeln!(out, "{query}")?;
    for (rank, c) in results.iter().enumerate() {
        writeln!(
            out,
            "{:>4}  {:>7.4}  {:>8}  {}",
            rank + 1,
            c.score,
            c.doc.id().to_string(),
            c.doc.card.title
        )?;
    }
    Ok(())
}
