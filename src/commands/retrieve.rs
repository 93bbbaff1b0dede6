//! `stylus retrieve`: top-K adapters for prompts.
//!
//! Opens a StylusDocs store (or the bundled catalog), embeds each query with the store's embedder
//! and searches as `retriever.mode` says (see `catalog`); `--build-hnsw` makes the store's HNSW
//! index and registers it in the store.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use stylus_core::{
    Evidence, ExplainedCandidate, Query, RetrievalFilter, StylusConfig, StylusError,
};

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
    let catalog = stylus::catalog::open(args.index.as_deref(), config, args.build_hnsw)?;
    let started = std::time::Instant::now();
    let vectors = super::runtime()?.block_on(catalog.embedder.embed(&queries))?;
    let embed_ms = started.elapsed().as_secs_f64() * 1e3 / queries.len() as f64;
    let filter = RetrievalFilter::default();
    let mut out = std::io::stdout().lock();
    for (query, vector) in queries.iter().zip(&vectors) {
        let started = std::time::Instant::now();
        let results = catalog
            .index
            .retrieve_explained(Query::new(query, vector), k, &filter)?;
        let timings = Timings {
            open: catalog.open_ms,
            embed: embed_ms,
            retrieve: started.elapsed().as_secs_f64() * 1e3,
        };
        let written = if args.json {
            writeln!(out, "{}", json_line(query, &results, &timings))
        } else {
            print_table(&mut out, query, &results).and_then(|()| {
                writeln!(
                    out,
                    "timings: open {:.1} ms (the catalog, once per run), embed {:.2} ms, search \
                     {:.2} ms",
                    timings.open, timings.embed, timings.retrieve
                )
            })
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
                let line = stylus_core::text::clean_prompt(&line);
                if !line.is_empty() {
                    lines.push(line);
                }
            }
            lines
        }
        (None, Some(prompt)) if !stylus_core::text::clean_prompt(prompt).is_empty() => {
            vec![stylus_core::text::clean_prompt(prompt)]
        }
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

/// Milliseconds: the catalog's open (once per run), the query's embedding (the run's mean) and
/// its search.
#[derive(Debug, serde::Serialize)]
struct Timings {
    open: f64,
    embed: f64,
    retrieve: f64,
}

/// One JSON line: `score` is the ranking's own (the fused RRF score for hybrid/BM25 modes),
/// `vector` and `bm25` the evidence behind it (`{rank, score}`, or null).
fn json_line(query: &str, results: &[ExplainedCandidate], timings: &Timings) -> String {
    let results: Vec<serde_json::Value> = results
        .iter()
        .map(|e| {
            let c = &e.candidate;
            serde_json::json!({
                "id": c.doc.id(),
                "score": c.score,
                "vector": e.vector,
                "bm25": e.bm25,
                "title": c.doc.card.title,
            })
        })
        .collect();
    serde_json::json!({ "query": query, "results": results, "timings_ms": timings }).to_string()
}

/// The table for people: rank, the BM25 score and the vector similarity behind it (`-`: not
/// among that ranking's results), id and title (control characters escaped).
fn print_table(
    out: &mut impl Write,
    query: &str,
    results: &[ExplainedCandidate],
) -> std::io::Result<()> {
    let esc = stylus_core::text::escape_control;
    writeln!(out, "{}", esc(query))?;
    let has_bm25 = results.iter().any(|e| e.bm25.is_some());
    if has_bm25 {
        writeln!(out, "rank     bm25  vector        id  title")?;
    } else {
        writeln!(out, "rank   vector        id  title")?;
    }
    let column = |e: Option<Evidence>| e.map_or("-".to_string(), |e| format!("{:.4}", e.score));
    // The tail that matched nothing (no BM25 hit, no vector similarity): filler up to K, one
    // line for all of it rather than a screen of zeros.
    let no_match =
        |e: &ExplainedCandidate| e.bm25.is_none() && e.vector.is_none_or(|v| v.score <= 0.0);
    let shown = results.len() - results.iter().rev().take_while(|e| no_match(e)).count();
    for (rank, e) in results[..shown].iter().enumerate() {
        let c = &e.candidate;
        if has_bm25 {
            write!(
                out,
                "{:>4}  {:>7}  {:>6}",
                rank + 1,
                column(e.bm25),
                column(e.vector)
            )?;
        } else {
            write!(out, "{:>4}  {:>7}", rank + 1, column(e.vector))?;
        }
        writeln!(
            out,
            "  {:>8}  {}",
            esc(&c.doc.id().to_string()),
            esc(&c.doc.card.title)
        )?;
    }
    if shown < results.len() {
        writeln!(
            out,
            "{:>4}  ... {} more (ranks {}-{}) share no word and no vector direction with the query \
             (`--json` lists them)",
            "",
            results.len() - shown,
            shown + 1,
            results.len()
        )?;
    }
    Ok(())
}
