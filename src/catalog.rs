//! The catalog a pipeline searches: a StylusDocs store or the bundled default catalog, with its
//! embedder and the search index the config asks for (what `stylus select --index DIR` opens).
//!
//! The dense half: lexical vectors (mostly zeros) go to the sparse inverted index, which is exact
//! and much faster than a graph at 4096 dims; dense vectors to the store's HNSW index when it has
//! one, else to the exact scan. `retriever.mode` then wraps it: `dense` alone, `bm25` or `hybrid`
//! (BM25 over the same documents, fused by reciprocal rank fusion), or `auto` (the default: `bm25`
//! for lexical vectors, `hybrid` for semantic ones).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use stylus_core::{AdapterDoc, Embedder, SearchIndex, StylusConfig, StylusError};
#[cfg(feature = "bert")]
use stylus_refiner::bert::{BertEmbedder, default_minilm_dir, same_embedder};
use stylus_refiner::lexical::{IDF_FILE, LexicalEmbedder};
use stylus_refiner::store::{StoreLock, StoreVectors, StylusDocs};
use stylus_retriever::persist::MANIFEST;
use stylus_retriever::{ExactRetriever, HnswRetriever, SparseRetriever, VectorMatrix, hybrid};

/// An embedder, the search index over the vectors it made (fused with BM25 as
/// `retriever.mode` asks), and the documents it searches.
#[derive(Clone)]
pub struct Catalog {
    pub embedder: Arc<dyn Embedder>,
    pub index: Arc<dyn SearchIndex>,
    pub docs: Vec<Arc<AdapterDoc>>,
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
            open_ms: started.elapsed().as_secs_f64() * 1e3,
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
    let started = std::time::Instant::now();
    let (embedder, docs, dense, lexical) = match index {
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
            )
        }
    };
    let searched = hybrid::with_mode(config.retriever.mode, dense, docs.clone(), lexical);
    let open_ms = started.elapsed().as_secs_f64() * 1e3;
    tracing::debug!(
        store = %index.map_or("<bundled>".into(), |d| d.display().to_string()),
        adapters = docs.len(),
        open_ms,
        "catalog opened"
    );
    Ok(Catalog {
        embedder,
        index: searched,
        docs,
        open_ms,
    })
}

/// Embedder, documents, the dense retriever, and whether its vectors are lexical.
type Opened = (
    Arc<dyn Embedder>,
    Vec<Arc<AdapterDoc>>,
    Arc<dyn SearchIndex>,
    bool,
);

fn open_store(dir: &Path, config: &StylusConfig, build_hnsw: bool) -> Result<Opened, StylusError> {
    let store = StylusDocs::open(dir)?;
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
        let sparse = match &vectors {
            StoreVectors::Sparse {
                indptr,
                indices,
                values,
            } => SparseRetriever::from_csr(docs.clone(), dim, indptr, indices, values)?,
            StoreVectors::Dense(dense) => SparseRetriever::new(docs.clone(), dim, dense)?,
        };
        return Ok((embedder, docs, Arc::new(sparse), true));
    }
    let vectors = match vectors {
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
    Ok((embedder, docs, dense, lexical))
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
