//! `stylus retrieve`: top-K adapters for prompts.
//!
//! Opens a StylusDocs store (or the bundled catalog), embeds each query with the store's embedder
//! and searches with the store's HNSW index when it has one (`--build-hnsw` makes and registers
//! it), else with the exact scan. With `retriever.hybrid = true` in the config, the dense ranking
//! is fused with BM25.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use stylus_core::{
    AdapterDoc, Candidate, Embedder, RetrievalFilter, Retriever, StylusConfig, StylusError,
};
use stylus_refiner::bert::{BertEmbedder, default_minilm_dir};
use stylus_refiner::lexical::{IDF_FILE, LexicalEmbedder};
use stylus_refiner::store::StylusDocs;
use stylus_retriever::persist::MANIFEST;
use stylus_retriever::{
    ExactRetriever, FusionConfig, HnswRetriever, HybridRetriever, LexicalConfig, LexicalIndex,
    VectorMatrix,
};

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
    let (embedder, search) = match &args.index {
        Some(dir) => {
            let store = StylusDocs::open(dir)?;
            let embedder = store_embedder(&store)?;
            (embedder, StoreSearch::open(store, config, args.build_hnsw)?)
        }
        None if args.build_hnsw => {
            return Err(StylusError::InvalidArgument(
                "--build-hnsw needs --index DIR (the bundled catalog is searched exactly)".into(),
            ));
        }
        None => {
            let catalog = stylus_refiner::bundled::load()?;
            let dim = catalog.embedder.dim();
            let docs: Vec<Arc<AdapterDoc>> = catalog.docs.into_iter().map(Arc::new).collect();
            let dense =
                ExactRetriever::new(docs.clone(), VectorMatrix::new(dim, catalog.vectors)?)?;
            let embedder: Arc<dyn Embedder> = Arc::new(catalog.embedder);
            (embedder, StoreSearch::new(Arc::new(dense), docs, config))
        }
    };
    let vectors = super::runtime()?.block_on(embedder.embed(&queries))?;
    let filter = RetrievalFilter::default();
    let mut out = std::io::stdout().lock();
    for (query, vector) in queries.iter().zip(&vectors) {
        let results = search.retrieve(query, vector, k, &filter)?;
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

/// The embedder a store was built with: the lexical one from its IDF table, else the MiniLM
/// model (`$STYLUS_MINILM_DIR`) when its id is the store's.
pub(crate) fn store_embedder(store: &StylusDocs) -> Result<Arc<dyn Embedder>, StylusError> {
    if store.manifest().files.contains_key(IDF_FILE) {
        return Ok(Arc::new(LexicalEmbedder::from_store(store)?));
    }
    if let Some(dir) = default_minilm_dir().filter(|d| d.is_dir()) {
        let bert = BertEmbedder::from_dir(&dir)?;
        if bert.id() == store.embedder_id() {
            return Ok(Arc::new(bert));
        }
    }
    Err(StylusError::store(
        store.dir(),
        format!(
            "vectors come from embedder `{}`, which is not available here (set STYLUS_MINILM_DIR \
             for a MiniLM store)",
            store.embedder_id()
        ),
    ))
}

/// A store's documents behind the configured search: HNSW or exact, optionally hybrid.
struct StoreSearch {
    dense: Arc<dyn Retriever>,
    hybrid: Option<HybridRetriever>,
}

impl StoreSearch {
    fn open(
        store: StylusDocs,
        config: &StylusConfig,
        build_hnsw: bool,
    ) -> Result<Self, StylusError> {
        let dir = store.dir().to_path_buf();
        let embedder_id = store.embedder_id().to_string();
        let dim = store.dim();
        let has_index = store.manifest().files.contains_key(MANIFEST);
        let (docs, vectors) = store.into_parts();
        let docs: Vec<Arc<AdapterDoc>> = docs.into_iter().map(Arc::new).collect();
        let vectors = VectorMatrix::new(dim, vectors)?;
        let hnsw = config.retriever.hnsw;
        let dense: Arc<dyn Retriever> = if build_hnsw {
            let index = HnswRetriever::build(docs.clone(), vectors, embedder_id, hnsw)?;
            save_into_store(&index, &dir)?;
            Arc::new(index)
        } else if has_index {
            Arc::new(HnswRetriever::load(
                &dir,
                docs.clone(),
                vectors,
                &embedder_id,
                hnsw,
            )?)
        } else {
            Arc::new(ExactRetriever::new(docs.clone(), vectors)?)
        };
        Ok(Self::new(dense, docs, config))
    }

    /// `dense` over `docs`, fused with BM25 over the same docs when the config asks for it.
    fn new(dense: Arc<dyn Retriever>, docs: Vec<Arc<AdapterDoc>>, config: &StylusConfig) -> Self {
        let hybrid = config.retriever.hybrid.then(|| {
            let lexical = LexicalIndex::build(docs, LexicalConfig::default());
            HybridRetriever::new(Arc::clone(&dense), lexical, FusionConfig::default())
        });
        Self { dense, hybrid }
    }

    fn retrieve(
        &self,
        prompt: &str,
        query: &[f32],
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<Candidate>, StylusError> {
        match &self.hybrid {
            Some(hybrid) => hybrid.retrieve(prompt, query, k, filter),
            None => self.dense.retrieve(query, k, filter),
        }
    }
}

/// Saves the index next to the store and registers its files in the store manifest.
fn save_into_store(index: &HnswRetriever, store_dir: &Path) -> Result<(), StylusError> {
    let tmp = std::env::temp_dir().join(format!("stylus-hnsw-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| StylusError::io(&tmp, e))?;
    let saved = index.save(&tmp).and_then(|paths| {
        let names: Vec<String> = paths
            .iter()
            .map(|p| {
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let sources: Vec<(&str, &Path)> = names
            .iter()
            .map(String::as_str)
            .zip(paths.iter().map(PathBuf::as_path))
            .collect();
        StylusDocs::add_files(store_dir, &sources).map(|_| ())
    });
    let _ = std::fs::remove_dir_all(&tmp);
    saved
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
