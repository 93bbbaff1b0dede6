//! Saving and reloading an [`HnswRetriever`] next to the StylusDocs store.
//!
//! Files in the store directory: `index.hnsw.graph` and `index.hnsw.data` (the `hnsw_rs` dump) and
//! `index.hnsw.json`, our manifest: format version, embedder id, dimension, count, graph
//! parameters, the sha256 of the vectors the graph was built from and of both dump files.
//! `hnsw_rs` panics or exits the process on a damaged dump, so every check (manifest, embedder,
//! dimension, count, checksums) runs before it reads a byte. Files are written to a temporary
//! directory first and renamed into place, the manifest last: a crash leaves the old index or none.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hnsw_rs::prelude::{AnnT, DistDot, HnswIo};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use stylus_core::{AdapterDoc, HnswConfig, Result, StylusError};

use crate::exact::ExactRetriever;
use crate::hnsw::{Graph, HnswRetriever, MAX_LAYER, check_config};
use crate::vectors::VectorMatrix;

/// Base name of the dump files.
const BASENAME: &str = "index";
/// Our manifest's file name.
pub const MANIFEST: &str = "index.hnsw.json";
const FORMAT: &str = "stylus-hnsw";
const FORMAT_VERSION: u32 = 1;

/// What `index.hnsw.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexManifest {
    format: String,
    version: u32,
    embedder: String,
    dim: usize,
    count: usize,
    distance: String,
    max_connections: usize,
    ef_construction: usize,
    ef_search: usize,
    /// sha256 of the vectors (f32 little-endian, row-major) the graph indexes.
    vectors_sha256: String,
    /// sha256 of each dump file, by file name.
    files: BTreeMap<String, String>,
}

impl HnswRetriever {
    /// Writes the index into `dir` (which must exist; typically the StylusDocs store directory)
    /// and returns the paths written, manifest last, so a store manifest can checksum them too.
    pub fn save(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let tmp = dir.join(format!(".index.hnsw.tmp-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| StylusError::io(&tmp, e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| StylusError::io(&tmp, e))?;
        let written = self.save_into(&tmp, dir);
        // Whatever happened, the temporary directory goes; its files were renamed out on success.
        let _ = std::fs::remove_dir_all(&tmp);
        written
    }

    fn save_into(&self, tmp: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
        let dumped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.graph.file_dump(tmp, BASENAME)
        }));
        match dumped {
            Ok(Ok(name)) if name == BASENAME => {}
            Ok(Ok(name)) => {
                return Err(StylusError::store(
                    tmp,
                    format!("hnsw_rs dumped to `{name}`"),
                ));
            }
            Ok(Err(e)) => return Err(StylusError::store(tmp, format!("HNSW dump failed: {e}"))),
            Err(_) => return Err(StylusError::store(tmp, "HNSW dump panicked")),
        }
        let mut files = BTreeMap::new();
        for name in dump_file_names() {
            files.insert(name.clone(), sha256_file(&tmp.join(&name))?);
        }
        let vectors = self.exact.vectors();
        let manifest = IndexManifest {
            format: FORMAT.into(),
            version: FORMAT_VERSION,
            embedder: self.embedder_id.clone(),
            dim: vectors.dim(),
            count: vectors.len(),
            distance: "dot".into(),
            max_connections: self.config.max_connections,
            ef_construction: self.config.ef_construction,
            ef_search: self.config.ef_search,
            vectors_sha256: sha256_vectors(vectors),
            files,
        };
        let text = serde_json::to_string_pretty(&manifest).expect("manifest serializes");
        let manifest_tmp = tmp.join(MANIFEST);
        std::fs::write(&manifest_tmp, text).map_err(|e| StylusError::io(&manifest_tmp, e))?;

        let mut written = Vec::new();
        for name in dump_file_names().into_iter().chain([MANIFEST.to_string()]) {
            let (from, to) = (tmp.join(&name), dir.join(&name));
            std::fs::rename(&from, &to).map_err(|e| StylusError::io(&to, e))?;
            written.push(to);
        }
        Ok(written)
    }

    /// Reloads an index saved by [`Self::save`] in `dir` for these documents and vectors (the
    /// store's), refusing one built by another embedder, of another dimension or size, over other
    /// vectors, or with a damaged file. `config.ef_search` applies to searches; the graph keeps the
    /// parameters it was built with.
    pub fn load(
        dir: &Path,
        docs: Vec<Arc<AdapterDoc>>,
        vectors: VectorMatrix,
        embedder_id: &str,
        config: HnswConfig,
    ) -> Result<Self> {
        check_config(&config)?;
        let manifest_path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&manifest_path)
            .map_err(|e| StylusError::io(&manifest_path, e))?;
        let manifest: IndexManifest =
            serde_json::from_str(&text).map_err(|e| StylusError::Json {
                path: manifest_path.clone(),
                line: Some(e.line()),
                message: e.to_string(),
                source: Some(Box::new(e)),
            })?;
        let bad = |message: String| StylusError::store(&manifest_path, message);
        if manifest.format != FORMAT || manifest.version != FORMAT_VERSION {
            return Err(bad(format!(
                "format {} v{} (expected {FORMAT} v{FORMAT_VERSION})",
                manifest.format, manifest.version
            )));
        }
        if manifest.embedder != embedder_id {
            return Err(bad(format!(
                "index built with embedder `{}`, but the store's vectors come from `{embedder_id}`",
                manifest.embedder
            )));
        }
        if manifest.dim != vectors.dim() {
            return Err(StylusError::Dimension {
                what: format!("HNSW index {}", manifest_path.display()),
                expected: vectors.dim(),
                got: manifest.dim,
            });
        }
        if manifest.count != vectors.len() || manifest.count != docs.len() {
            return Err(bad(format!(
                "index holds {} vectors, the store {} documents and {} vectors",
                manifest.count,
                docs.len(),
                vectors.len()
            )));
        }
        if manifest.vectors_sha256 != sha256_vectors(&vectors) {
            return Err(bad(
                "index was built from other vectors than the store's".into()
            ));
        }
        for name in dump_file_names() {
            let path = dir.join(&name);
            let want = manifest
                .files
                .get(&name)
                .ok_or_else(|| bad(format!("no checksum for `{name}`")))?;
            if &sha256_file(&path)? != want {
                return Err(StylusError::store(
                    &path,
                    "checksum mismatch: the file is corrupt or truncated",
                ));
            }
        }
        let graph = load_graph(dir)?;
        if graph.get_nb_point() != manifest.count {
            return Err(bad(format!(
                "graph holds {} points, the manifest says {}",
                graph.get_nb_point(),
                manifest.count
            )));
        }
        let exact = ExactRetriever::new(docs, vectors)?;
        let config = HnswConfig {
            max_connections: manifest.max_connections,
            ef_construction: manifest.ef_construction,
            ef_search: config.ef_search,
        };
        Ok(Self {
            exact,
            graph,
            config,
            embedder_id: manifest.embedder,
        })
    }

    /// True when `dir` holds a saved index (its manifest).
    pub fn exists_in(dir: &Path) -> bool {
        dir.join(MANIFEST).is_file()
    }
}

/// Loads the verified dump. `hnsw_rs` ties the graph's lifetime to its loader (for memory-mapped
/// data, which we do not use), so the small loader struct is leaked once per load to give the
/// graph a `'static` lifetime.
fn load_graph(dir: &Path) -> Result<Graph> {
    let loader: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, BASENAME)));
    // Taken out of an Option so the `'static` borrow moves into the closure's result.
    let mut slot = Some(loader);
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        slot.take().map(|loader| loader.load_hnsw::<f32, DistDot>())
    }));
    let mut graph = match loaded {
        Ok(Some(Ok(graph))) => graph,
        Ok(None) => unreachable!("the loader is taken exactly once"),
        Ok(Some(Err(e))) => {
            return Err(StylusError::store(dir, format!("HNSW reload failed: {e}")));
        }
        Err(_) => return Err(StylusError::store(dir, "HNSW reload panicked")),
    };
    if graph.get_max_level() != MAX_LAYER {
        return Err(StylusError::store(
            dir,
            "HNSW dump has an unexpected layer count",
        ));
    }
    graph.set_searching_mode(true);
    Ok(graph)
}

fn dump_file_names() -> [String; 2] {
    [
        format!("{BASENAME}.hnsw.graph"),
        format!("{BASENAME}.hnsw.data"),
    ]
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| StylusError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| StylusError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn sha256_vectors(vectors: &VectorMatrix) -> String {
    let mut hasher = Sha256::new();
    for chunk in vectors.as_slice().chunks(16 * 1024) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
        hasher.update(&bytes);
    }
    hex::encode(hasher.finalize())
}
