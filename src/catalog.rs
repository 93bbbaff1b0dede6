//! The catalog a pipeline searches: a StylusDocs store or the bundled default catalog, with its
//! embedder and the search index the config asks for (what `stylus select --index DIR` opens).
//!
//! The dense half: lexical vectors (mostly zeros) go to the sparse inverted index, which is exact
//! and much faster than a graph at 4096 dims; dense vectors to the store's HNSW index when it has
//! one, else to the exact scan. `retriever.mode` then wraps it: `dense` alone, `bm25` or `hybrid`
//! (BM25 over the same documents, fused by reciprocal rank fusion), or `auto` (the default: `bm25`
//! for lexical vectors, `hybrid` for semantic ones).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use stylus_core::{
    AdapterDoc, AdapterId, Candidate, Embedder, ExplainedCandidate, Query, RetrievalFilter,
    SearchIndex, StylusConfig, StylusError,
};
#[cfg(feature = "bert")]
use stylus_refiner::bert::{BertEmbedder, default_minilm_dir};
#[cfg(feature = "bert")]
use stylus_refiner::embedder_id::same_embedder;
use stylus_refiner::lexical::{IDF_FILE, LexicalEmbedder};
use stylus_refiner::store::{DocLines, StoreLock, StoreVectors, StylusDocs};
use stylus_retriever::lexical::{BM25_FILE, BM25_FORMAT_VERSION, Bm25Postings};
use stylus_retriever::persist::MANIFEST;
use stylus_retriever::{
    ExactRetriever, HnswRetriever, LazyIndex, LexicalConfig, LexicalIndex, SparseRetriever,
    VectorMatrix, hybrid,
};

/// An embedder, the search index over the vectors it made (fused with BM25 as
/// `retriever.mode` asks), and the documents it searches.
#[derive(Clone)]
pub struct Catalog {
    pub embedder: Arc<dyn Embedder>,
    /// Its candidates are whole documents.
    pub index: Arc<dyn SearchIndex>,
    /// The documents searched; from a store, without their long texts (see
    /// [`Catalog::whole_docs`]).
    pub docs: Vec<Arc<AdapterDoc>>,
    /// A store's document lines, parsed whole on demand.
    lines: Option<Arc<DocLines>>,
    /// Milliseconds the open took (reading, verifying, building the in-memory indexes).
    pub open_ms: f64,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("embedder", &self.embedder.id())
            .field("documents", &self.docs.len())
            .field("open_ms", &self.open_ms)
            .finish_non_exhaustive()
    }
}

impl Catalog {
    /// A catalog from parts built in memory (benchmarks, tests, an application's own
    /// documents): `dense` searches `docs` with `embedder`'s vectors (`lexical`: hashed TF-IDF
    /// ones), wrapped as the config's `retriever.mode` asks.
    pub fn from_parts(
        embedder: Arc<dyn Embedder>,
        dense: Arc<dyn SearchIndex>,
        docs: Vec<Arc<AdapterDoc>>,
        lexical: bool,
        config: &StylusConfig,
    ) -> Self {
        let started = std::time::Instant::now();
        let index = hybrid::with_mode(config.retriever.mode, dense, docs.clone(), lexical);
        Self {
            embedder,
            index,
            docs,
            lines: None,
            open_ms: started.elapsed().as_secs_f64() * 1e3,
        }
    }

    /// Every document, whole.
    pub fn whole_docs(&self) -> Result<Vec<Arc<AdapterDoc>>, StylusError> {
        match &self.lines {
            Some(lines) => lines.all(),
            None => Ok(self.docs.clone()),
        }
    }
}

/// Opens the store at `index` (the bundled catalog when `None`). With `build_hnsw`, a dense
/// store's HNSW index is built, saved into the store (covered by its manifest) and used.
pub fn open(
    index: Option<&Path>,
    config: &StylusConfig,
    build_hnsw: bool,
) -> Result<Catalog, StylusError> {
    let index_dir = index;
    let started = std::time::Instant::now();
    let (embedder, docs, dense, lexical, bm25, lines) = match index {
        Some(dir) => open_store(dir, config, build_hnsw)?,
        None if build_hnsw => {
            return Err(StylusError::InvalidArgument(
                "--build-hnsw needs --index DIR (the bundled catalog is searched exactly)".into(),
            ));
        }
        None => {
            let catalog = stylus_refiner::bundled::load()?;
            let dim = catalog.embedder.dim();
            let docs: Vec<Arc<AdapterDoc>> = catalog.docs.into_iter().map(Arc::new).collect();
            let dense = SparseRetriever::new(docs.clone(), dim, &catalog.vectors)?;
            let embedder: Arc<dyn Embedder> = Arc::new(catalog.embedder);
            (
                embedder,
                docs,
                Arc::new(dense) as Arc<dyn SearchIndex>,
                true,
                None,
                None,
            )
        }
    };
    let retriever = hybrid::with_mode_from(config.retriever.mode, dense, lexical, || match bm25 {
        Some(saved) => LexicalIndex::from_postings(docs.clone(), saved),
        None => {
            let started = std::time::Instant::now();
            // BM25 reads the long texts: the whole documents.
            let whole = match &lines {
                Some(lines) => lines.all()?,
                None => docs.clone(),
            };
            let index = LexicalIndex::build(whole, LexicalConfig::default());
            if let Some(dir) = index_dir {
                tracing::info!(
                    store = %dir.display(),
                    build_ms = started.elapsed().as_secs_f64() * 1e3,
                    "the store has no saved BM25 index ({BM25_FILE}, written by `stylus \
                     index` since issue 20): built it in memory; index again to save it"
                );
            }
            Ok(index)
        }
    })?;
    let retriever: Arc<dyn SearchIndex> = match &lines {
        Some(lines) => Arc::new(WholeDocs::new(retriever, Arc::clone(lines), &docs)),
        None => retriever,
    };
    let open_ms = started.elapsed().as_secs_f64() * 1e3;
    tracing::debug!(
        store = %index.map_or("<bundled>".into(), |d| d.display().to_string()),
        adapters = docs.len(),
        open_ms,
        "catalog opened"
    );
    Ok(Catalog {
        embedder,
        index: retriever,
        docs,
        lines,
        open_ms,
    })
}

/// Embedder, documents (light), the dense retriever, whether its vectors are lexical, the
/// store's saved BM25 postings (when it has current ones for the default BM25 parameters) and
/// the whole documents' lines.
type Opened = (
    Arc<dyn Embedder>,
    Vec<Arc<AdapterDoc>>,
    Arc<dyn SearchIndex>,
    bool,
    Option<Bm25Postings>,
    Option<Arc<DocLines>>,
);

fn open_store(dir: &Path, config: &StylusConfig, build_hnsw: bool) -> Result<Opened, StylusError> {
    let started = std::time::Instant::now();
    let mut store = StylusDocs::open_light(dir, &[BM25_FILE])?;
    let lines = store.doc_lines();
    let read_ms = started.elapsed().as_secs_f64() * 1e3;
    let bm25 = match store.take_kept_file(BM25_FILE) {
        None => None,
        Some(bytes) => saved_postings(&dir.join(BM25_FILE), &bytes, store.len())?,
    };
    let bm25_ms = started.elapsed().as_secs_f64() * 1e3 - read_ms;
    let embedder = store_embedder(&store)?;
    let embedder_id = store.embedder_id().to_string();
    let dim = store.dim();
    let has_index = store.manifest().files.contains_key(MANIFEST);
    // The same test `store_embedder` uses to pick the lexical embedder.
    let lexical = store.manifest().files.contains_key(IDF_FILE);
    let count = store.len();
    let (docs, vectors) = store.into_parts();
    let docs: Vec<Arc<AdapterDoc>> = docs.into_iter().map(Arc::new).collect();
    if lexical && !build_hnsw {
        // BM25 answers most searches of a lexical store alone: the vectors are read, checked
        // and indexed by the first search that needs them.
        let sparse = LazyIndex::new(dim, count, dir, {
            let docs = docs.clone();
            move || {
                // A store with its postings file needs no vectors read nor transposed: the
                // index reads the lists its queries touch.
                if let Some(postings) = vectors.postings() {
                    let sparse = SparseRetriever::from_lists(docs, postings)?;
                    return Ok(Arc::new(sparse) as Arc<dyn SearchIndex>);
                }
                let sparse = match vectors.load()? {
                    StoreVectors::Sparse {
                        indptr,
                        indices,
                        values,
                    } => SparseRetriever::from_csr(docs, dim, &indptr, &indices, &values)?,
                    StoreVectors::Dense(dense) => SparseRetriever::new(docs, dim, &dense)?,
                };
                Ok(Arc::new(sparse) as Arc<dyn SearchIndex>)
            }
        });
        log_open(dir, read_ms, bm25_ms, started);
        return Ok((embedder, docs, Arc::new(sparse), true, bm25, lines));
    }
    let vectors = match vectors.load()? {
        StoreVectors::Dense(dense) => dense,
        sparse => sparse.to_dense(count, dim),
    };
    let vectors = VectorMatrix::new(dim, vectors)?;
    let hnsw = config.retriever.hnsw;
    let dense: Arc<dyn SearchIndex> = if build_hnsw {
        let index = HnswRetriever::build(docs.clone(), vectors, embedder_id, hnsw)?;
        save_into_store(&index, dir)?;
        Arc::new(index)
    } else if has_index {
        let index = HnswRetriever::load(dir, docs.clone(), vectors, &embedder_id, hnsw)?;
        Arc::new(index)
    } else {
        Arc::new(ExactRetriever::new(docs.clone(), vectors)?)
    };
    log_open(dir, read_ms, bm25_ms, started);
    Ok((embedder, docs, dense, lexical, bm25, lines))
}

/// A retriever over light documents whose candidates come out whole (parsed from the store's
/// lines when first returned).
struct WholeDocs {
    inner: Arc<dyn SearchIndex>,
    lines: Arc<DocLines>,
    positions: HashMap<AdapterId, usize>,
}

impl WholeDocs {
    fn new(inner: Arc<dyn SearchIndex>, lines: Arc<DocLines>, docs: &[Arc<AdapterDoc>]) -> Self {
        let positions = docs
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id().clone(), i))
            .collect();
        Self {
            inner,
            lines,
            positions,
        }
    }

    fn whole(&self, candidate: Candidate) -> Result<Candidate, StylusError> {
        let Some(&index) = self.positions.get(candidate.doc.id()) else {
            // Not one of the store's documents: nothing to complete.
            return Ok(candidate);
        };
        Ok(Candidate {
            doc: self.lines.doc(index)?,
            score: candidate.score,
        })
    }
}

impl SearchIndex for WholeDocs {
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn len(&self) -> usize {
        self.inner.len()
    }

    fn retrieve(
        &self,
        query: Query<'_>,
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<Candidate>, StylusError> {
        self.inner
            .retrieve(query, k, filter)?
            .into_iter()
            .map(|c| self.whole(c))
            .collect()
    }

    fn retrieve_explained(
        &self,
        query: Query<'_>,
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<ExplainedCandidate>, StylusError> {
        self.inner
            .retrieve_explained(query, k, filter)?
            .into_iter()
            .map(|e| {
                Ok(ExplainedCandidate {
                    candidate: self.whole(e.candidate)?,
                    ..e
                })
            })
            .collect()
    }

    fn retrieve_batch(
        &self,
        queries: &[Query<'_>],
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<Vec<Candidate>>, StylusError> {
        self.inner
            .retrieve_batch(queries, k, filter)?
            .into_iter()
            .map(|list| list.into_iter().map(|c| self.whole(c)).collect())
            .collect()
    }
}

fn log_open(dir: &Path, read_ms: f64, bm25_ms: f64, started: std::time::Instant) {
    tracing::debug!(
        store = %dir.display(),
        read_ms,
        bm25_ms,
        embedder_and_vector_index_ms = started.elapsed().as_secs_f64() * 1e3 - read_ms - bm25_ms,
        "store opened"
    );
}

/// The store's saved BM25 postings, checked. A file of another layout version (an older or newer
/// stylus wrote it) or made with other BM25 parameters is skipped (the index is rebuilt in
/// memory); a damaged one is an error naming it.
fn saved_postings(
    path: &Path,
    bytes: &[u8],
    docs: usize,
) -> Result<Option<Bm25Postings>, StylusError> {
    match Bm25Postings::file_version(bytes) {
        Some(BM25_FORMAT_VERSION) => {}
        Some(version) => {
            tracing::warn!(
                path = %path.display(),
                "BM25 postings of format v{version}, this build reads v{BM25_FORMAT_VERSION}: \
                 rebuilding them in memory (index again to save them)"
            );
            return Ok(None);
        }
        None => {
            return Err(StylusError::store(
                path,
                "not a BM25 postings file (bad magic)",
            ));
        }
    }
    let postings = Bm25Postings::from_bytes(bytes, path)?;
    if postings.doc_count() != docs {
        return Err(StylusError::store(
            path,
            format!(
                "BM25 postings of {} documents, the store has {docs}",
                postings.doc_count()
            ),
        ));
    }
    if postings.config() != LexicalConfig::default() {
        tracing::info!(path = %path.display(), "BM25 postings made with other parameters: rebuilding them in memory");
        return Ok(None);
    }
    Ok(Some(postings))
}

/// The embedder a store was built with: the lexical one from its IDF table, else (feature `bert`)
/// the MiniLM model (`$STYLUS_MINILM_DIR`) when its id is the store's.
pub fn store_embedder(store: &StylusDocs) -> Result<Arc<dyn Embedder>, StylusError> {
    if store.manifest().files.contains_key(IDF_FILE) {
        return Ok(Arc::new(LexicalEmbedder::from_store(store)?));
    }
    #[cfg(feature = "bert")]
    if store.embedder_id().starts_with("bert:") {
        // The id names the model, not its folder: any copy of it will do.
        let mut tried = Vec::new();
        let candidates = default_minilm_dir()
            .filter(|d| d.is_dir())
            .map(|dir| BertEmbedder::from_dir(&dir))
            .into_iter()
            .chain(std::iter::once_with(|| {
                BertEmbedder::from_hf_cache("sentence-transformers/all-MiniLM-L6-v2")
            }));
        for candidate in candidates {
            match candidate {
                Ok(bert) if same_embedder(&bert.id(), store.embedder_id()) => {
                    return Ok(Arc::new(bert));
                }
                Ok(bert) => tried.push(format!("{} (another model)", bert.id())),
                Err(err) => tried.push(err.to_string()),
            }
        }
        return Err(StylusError::store(
            store.dir(),
            format!(
                "vectors come from embedder `{}`, which is not found here (tried: {}). Install \
                 the model with tools/fetch-minilm.sh or set STYLUS_MINILM_DIR to its folder",
                store.embedder_id(),
                tried.join("; ")
            ),
        ));
    }
    Err(StylusError::store(
        store.dir(),
        format!(
            "vectors come from embedder `{}`, which this build cannot load for queries",
            store.embedder_id()
        ),
    ))
}

/// Saves the index next to the store and registers its files in the store manifest.
fn save_into_store(index: &HnswRetriever, store_dir: &Path) -> Result<(), StylusError> {
    let _lock = StoreLock::acquire(store_dir)?;
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
