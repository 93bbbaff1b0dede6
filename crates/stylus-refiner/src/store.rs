//! The StylusDocs store: refined adapter documents and their vectors in one directory.
//!
//! ```text
//! store/
//!   manifest.json        format + version, embedder id and dim, count, refiners,
//!                        sha256, CRC-32 and size of every other file
//!   docs.jsonl           one AdapterDoc per line, in vector order
//!   docs.light.jsonl     per document, its short fields (what searching needs) and the byte
//!                        range and CRC-32 of its line in docs.jsonl
//!   vectors.safetensors  one f32 tensor `vectors` of shape [count, dim] (dense embedders), or
//!   vectors.sparse.safetensors  the same rows in CSR form (mostly-zero vectors, like the lexical
//!                        embedder's): `indptr` u64 [count + 1], `indices` u32 [nnz],
//!                        `values` f32 [nnz] (15x smaller for the 4096-dim lexical vectors)
//!   vectors.postings     with sparse vectors: the same values by dimension, each list with its
//!                        CRC-32 (see [`crate::postings_file`])
//!   ...                  files other components register (lexical IDF table, the BM25
//!                        postings `bm25.postings`, HNSW graph)
//! ```
//!
//! A store is written whole into a temporary sibling directory and renamed into place, so a
//! reader sees the old store or the new one, never half of one. Adding files later
//! ([`StylusDocs::add_files`]) builds a new directory the same way (hard-linking the unchanged
//! files). Opening verifies everything: manifest format, every checksum (the CRC-32, at memory
//! speed; the sha256 for stores written without CRCs) and size, the line count of the docs, the
//! tensor's shape; any failure is a [`StylusError::Store`] naming the file. The directory must be
//! the same one before and after its files are read (else they are read again), so a reader never
//! mixes files of two stores.
//!
//! [`StylusDocs::open_light`] is the open for searching: it reads and checks the light
//! documents (and the files the caller keeps), and only the size of docs.jsonl and of the
//! vectors, whose files it holds open. A whole document is read from the held docs.jsonl when
//! asked for ([`DocLines`]) and checked against its line's CRC-32; the vectors are read and
//! checked against the manifest when first asked for ([`StylusDocs::vectors`]). Holding the files
//! open keeps them those of the opened store even when a writer swaps the directory later.
//! With sparse vectors it also holds vectors.postings (its header checked), from which a sparse
//! index reads only the lists its queries touch ([`VectorsLoader::postings`]).
//! Stores written before `docs.light.jsonl` existed are opened light by scanning docs.jsonl.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use stylus_core::{
    AdapterCard, AdapterDoc, AdapterFile, AdapterId, AdapterStats, BaseModel, Category,
    PostingLists, Result, StylusError,
};

use crate::postings_file::{POSTINGS_FILE, PostingsFile};

/// The `format` field of every manifest.
pub const FORMAT: &str = "stylus-docs";
/// The layout version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";
pub const DOCS_FILE: &str = "docs.jsonl";
/// The documents' short fields with the place and checksum of their lines in [`DOCS_FILE`].
pub const LIGHT_DOCS_FILE: &str = "docs.light.jsonl";
pub const VECTORS_FILE: &str = "vectors.safetensors";
/// The tensor name inside [`VECTORS_FILE`].
pub const VECTORS_TENSOR: &str = "vectors";
/// The sparse (CSR) form of the vectors, written instead of [`VECTORS_FILE`] when at most
/// [`SPARSE_MAX_DENSITY`] of the values are non-zero.
pub const SPARSE_VECTORS_FILE: &str = "vectors.sparse.safetensors";
/// Share of non-zero values up to which vectors are stored sparse.
pub const SPARSE_MAX_DENSITY: f64 = 0.2;

/// A store's vectors: dense rows, or the non-zeros of each row (CSR).
#[derive(Debug, Clone, PartialEq)]
pub enum StoreVectors {
    /// Row-major `[count, dim]`.
    Dense(Vec<f32>),
    /// Row `i` has the values `values[indptr[i]..indptr[i + 1]]` at the dimensions
    /// `indices[indptr[i]..indptr[i + 1]]` (increasing), zeros elsewhere.
    Sparse {
        indptr: Vec<u64>,
        indices: Vec<u32>,
        values: Vec<f32>,
    },
}

impl StoreVectors {
    /// The CSR form of dense rows of `dim` values.
    pub fn sparse_from_dense(dim: usize, dense: &[f32]) -> Self {
        let (indptr, indices, values) = csr_of(dim, dense);
        Self::Sparse {
            indptr,
            indices,
            values,
        }
    }

    /// Row `index` as `dim` dense values.
    pub fn row(&self, index: usize, dim: usize) -> std::borrow::Cow<'_, [f32]> {
        match self {
            Self::Dense(values) => {
                std::borrow::Cow::Borrowed(&values[index * dim..(index + 1) * dim])
            }
            Self::Sparse {
                indptr,
                indices,
                values,
            } => {
                let mut row = vec![0f32; dim];
                let (a, b) = (indptr[index] as usize, indptr[index + 1] as usize);
                for (&d, &v) in indices[a..b].iter().zip(&values[a..b]) {
                    row[d as usize] = v;
                }
                std::borrow::Cow::Owned(row)
            }
        }
    }

    /// All rows, dense, row-major.
    pub fn to_dense(&self, rows: usize, dim: usize) -> Vec<f32> {
        match self {
            Self::Dense(values) => values.clone(),
            Self::Sparse { .. } => (0..rows)
                .flat_map(|i| self.row(i, dim).into_owned())
                .collect(),
        }
    }
}

/// The store's table of contents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub embedder: EmbedderInfo,
    /// Number of documents (= vector rows).
    pub count: usize,
    /// Distinct refiner ids of the documents, sorted.
    pub refiners: Vec<String>,
    /// Every file of the store except the manifest, with its checksum.
    pub files: BTreeMap<String, FileEntry>,
}

/// Which embedder made the vectors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbedderInfo {
    pub id: String,
    pub dim: usize,
}

/// Size and checksums of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Lower-case hex sha256.
    pub sha256: String,
    pub bytes: u64,
    /// CRC-32 (IEEE) as 8 lower-case hex digits: what opening a store checks, at memory speed
    /// (sha256 runs at a few hundred MB/s, most of a 7K-card store's open). Stores written
    /// before it have none; their files are checked against the sha256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32: Option<String>,
}

impl FileEntry {
    /// The entry of a file holding `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            sha256: hex::encode(Sha256::digest(bytes)),
            bytes: bytes.len() as u64,
            crc32: Some(crc32_hex(crc32fast::hash(bytes))),
        }
    }
}

fn crc32_hex(crc: u32) -> String {
    format!("{crc:08x}")
}

/// A file written into the store next to docs and vectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraFile {
    /// A plain file name (no directories).
    pub name: String,
    pub bytes: Vec<u8>,
}

/// What a new store holds, before it is written.
#[derive(Debug, Clone)]
pub struct NewStore {
    pub embedder_id: String,
    pub dim: usize,
    pub docs: Vec<AdapterDoc>,
    /// Row-major `[docs.len(), dim]`.
    pub vectors: Vec<f32>,
    pub extra_files: Vec<ExtraFile>,
}

/// An open, verified store: documents and vectors in memory (after a light open: the vectors
/// when first asked for).
#[derive(Debug, Clone)]
pub struct StylusDocs {
    dir: PathBuf,
    manifest: Manifest,
    docs: Vec<AdapterDoc>,
    vectors: std::sync::OnceLock<StoreVectors>,
    /// After a light open: the held vectors file, read by the first [`StylusDocs::vectors`].
    vectors_file: Option<Arc<VectorsFile>>,
    by_id: HashMap<AdapterId, usize>,
    /// Bytes of the extra files the opener asked to keep ([`StylusDocs::open_keeping`]), as
    /// verified against the manifest.
    kept: BTreeMap<String, Vec<u8>>,
    /// With a light open ([`StylusDocs::open_light`]): the documents' lines, parsed whole on
    /// demand.
    lines: Option<Arc<DocLines>>,
    /// After a light open of a store with sparse vectors: its held postings file.
    postings: Option<Arc<PostingsFile>>,
}

impl StylusDocs {
    /// Writes a new store at `dir` atomically (replacing a store already there) and returns it.
    /// A non-empty `dir` that is not a store is refused.
    pub fn write(dir: &Path, store: NewStore) -> Result<Self> {
        let NewStore {
            embedder_id,
            dim,
            docs,
            vectors,
            extra_files,
        } = store;
        if dim == 0 || vectors.len() != docs.len() * dim {
            return Err(StylusError::Dimension {
                what: format!("store {}", dir.display()),
                expected: docs.len() * dim,
                got: vectors.len(),
            });
        }
        let mut by_id = HashMap::with_capacity(docs.len());
        for (i, doc) in docs.iter().enumerate() {
            if by_id.insert(doc.id().clone(), i).is_some() {
                return Err(StylusError::adapter(doc.id(), "appears twice in the store"));
            }
        }
        for file in &extra_files {
            check_extra_name(dir, &file.name)?;
            if is_docs_or_vectors(&file.name) {
                return Err(StylusError::store(
                    dir.join(&file.name),
                    "an extra file cannot take the name of the documents or vectors",
                ));
            }
        }

        let mut docs_bytes = Vec::new();
        let mut light_bytes = Vec::new();
        for doc in &docs {
            let start = docs_bytes.len();
            serde_json::to_writer(&mut docs_bytes, doc).map_err(|e| {
                StylusError::store(dir.join(DOCS_FILE), format!("doc {}: {e}", doc.id()))
            })?;
            let line = LineRef {
                start: start as u64,
                end: docs_bytes.len() as u64,
                crc32: crc32fast::hash(&docs_bytes[start..]),
            };
            docs_bytes.push(b'\n');
            serde_json::to_writer(&mut light_bytes, &LightDoc::of(doc, line)).map_err(|e| {
                StylusError::store(dir.join(LIGHT_DOCS_FILE), format!("doc {}: {e}", doc.id()))
            })?;
            light_bytes.push(b'\n');
        }
        let nonzero = vectors.iter().filter(|v| **v != 0.0).count();
        let mut postings = None;
        let sparse =
            !vectors.is_empty() && (nonzero as f64) <= SPARSE_MAX_DENSITY * vectors.len() as f64;
        let (vectors_file, vectors_bytes, vectors) = if sparse {
            let (indptr, indices, values) = csr_of(dim, &vectors);
            let bytes = sparse_tensor_bytes(&indptr, &indices, &values);
            postings = Some(crate::postings_file::encode(
                dim, &indptr, &indices, &values,
            ));
            let csr = StoreVectors::Sparse {
                indptr,
                indices,
                values,
            };
            (SPARSE_VECTORS_FILE, bytes, csr)
        } else {
            let bytes = f32_tensor_bytes(VECTORS_TENSOR, &[docs.len(), dim], &vectors);
            (VECTORS_FILE, bytes, StoreVectors::Dense(vectors))
        };

        let mut files = vec![
            (DOCS_FILE.to_string(), docs_bytes),
            (LIGHT_DOCS_FILE.to_string(), light_bytes),
            (vectors_file.to_string(), vectors_bytes),
        ];
        if let Some(postings) = postings {
            files.push((POSTINGS_FILE.to_string(), postings));
        }
        files.extend(extra_files.into_iter().map(|f| (f.name, f.bytes)));
        let refiners: BTreeSet<String> = docs.iter().map(|d| d.refiner.clone()).collect();
        let mut manifest = Manifest {
            format: FORMAT.to_string(),
            format_version: FORMAT_VERSION,
            embedder: EmbedderInfo {
                id: embedder_id,
                dim,
            },
            count: docs.len(),
            refiners: refiners.into_iter().collect(),
            files: BTreeMap::new(),
        };
        for (name, bytes) in &files {
            manifest.files.insert(name.clone(), FileEntry::of(bytes));
        }

        replace_dir_atomically(dir, |tmp| {
            for (name, bytes) in &files {
                write_synced(&tmp.join(name), bytes)?;
            }
            write_manifest(tmp, &manifest)
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            docs,
            vectors: vectors.into(),
            vectors_file: None,
            by_id,
            kept: BTreeMap::new(),
            lines: None,
            postings: None,
        })
    }

    /// Opens and verifies the store at `dir`. A store caught in the middle of being swapped by
    /// a writer (its lock held) is opened again once the writer is done, so a reader sees the old
    /// store or the new one.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_keeping(dir, &[])
    }

    /// [`StylusDocs::open`], keeping the verified bytes of the listed extra files (those the
    /// manifest lists; see [`StylusDocs::kept_file`]), read in the same pass as the rest, so
    /// they belong to the same store as the documents.
    pub fn open_keeping(dir: &Path, keep: &[&str]) -> Result<Self> {
        Self::open_with(dir, keep, false)
    }

    /// [`StylusDocs::open_keeping`] for searching: the documents come without their long texts
    /// (both descriptions, the embedding text, sample prompts and images: empty here), from
    /// docs.light.jsonl; [`StylusDocs::doc_lines`] gives the whole documents on demand (the
    /// candidates of a query), each checked against its line's CRC-32, and the vectors are read
    /// and checked when first asked for. The other files are checked as by a full open.
    pub fn open_light(dir: &Path, keep: &[&str]) -> Result<Self> {
        Self::open_with(dir, keep, true)
    }

    fn open_with(dir: &Path, keep: &[&str], light: bool) -> Result<Self> {
        match Self::open_unlocked_with(dir, keep, light) {
            Ok(store) => Ok(store),
            Err(err) => {
                if StoreLock::wait_for_writer(dir) {
                    Self::open_unlocked_with(dir, keep, light)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Opens and verifies the store at `dir` without waiting for a writer (for the writer
    /// itself, which holds the [`StoreLock`]).
    pub fn open_unlocked(dir: &Path) -> Result<Self> {
        Self::open_unlocked_keeping(dir, &[])
    }

    /// [`StylusDocs::open_unlocked`], keeping files as [`StylusDocs::open_keeping`] does.
    pub fn open_unlocked_keeping(dir: &Path, keep: &[&str]) -> Result<Self> {
        Self::open_unlocked_with(dir, keep, false)
    }

    fn open_unlocked_with(dir: &Path, keep: &[&str], light: bool) -> Result<Self> {
        // A writer swaps the whole directory: when `dir` is the same directory before and after
        // every file was read, they all come from one store. Otherwise read it again.
        let mut tries = 0;
        loop {
            let before = dir_identity(dir);
            let store = Self::read_once(dir, keep, light);
            if before.is_none() || before == dir_identity(dir) {
                return store;
            }
            tries += 1;
            if tries == 3 {
                return store.and(Err(StylusError::store(
                    dir,
                    "the store was replaced while it was read, three times; try again",
                )));
            }
        }
    }

    fn read_once(dir: &Path, keep: &[&str], light: bool) -> Result<Self> {
        let manifest = read_manifest(dir)?;
        if !manifest.files.contains_key(DOCS_FILE) {
            return Err(StylusError::store(
                dir.join(MANIFEST_FILE),
                format!("lists no {DOCS_FILE}"),
            ));
        }
        let sparse = manifest.files.contains_key(SPARSE_VECTORS_FILE);
        let vectors_name = if sparse {
            SPARSE_VECTORS_FILE
        } else {
            VECTORS_FILE
        };
        if !manifest.files.contains_key(vectors_name) {
            return Err(StylusError::store(
                dir.join(MANIFEST_FILE),
                format!("lists no {VECTORS_FILE} (nor {SPARSE_VECTORS_FILE})"),
            ));
        }
        // Light opens of stores that have the light documents read neither docs.jsonl nor the
        // vectors now: they hold both files open for later.
        let deferred = light && manifest.files.contains_key(LIGHT_DOCS_FILE);
        let started = std::time::Instant::now();
        let mut docs_bytes = Vec::new();
        let mut light_bytes = Vec::new();
        let mut vectors_bytes = Vec::new();
        let mut held_docs = None;
        let mut held_vectors = None;
        let mut postings = None;
        let mut kept = BTreeMap::new();
        for (name, entry) in &manifest.files {
            let path = dir.join(name);
            if deferred && name == DOCS_FILE {
                held_docs = Some(open_sized(&path, entry)?);
                continue;
            }
            if deferred && name == vectors_name {
                held_vectors = Some(open_sized(&path, entry)?);
                continue;
            }
            if deferred && name == POSTINGS_FILE {
                let file = open_sized(&path, entry)?;
                let (dim, count) = (manifest.embedder.dim, manifest.count);
                postings = Some(PostingsFile::open(&path, file, entry.bytes, dim, count)?);
                continue;
            }
            let mut extra = Vec::new();
            let buffer = if name == DOCS_FILE {
                Some(&mut docs_bytes)
            } else if name == vectors_name {
                Some(&mut vectors_bytes)
            } else if deferred && name == LIGHT_DOCS_FILE {
                Some(&mut light_bytes)
            } else if keep.contains(&name.as_str()) {
                Some(&mut extra)
            } else {
                None
            };
            verify_file(&path, entry, buffer)?;
            if keep.contains(&name.as_str()) {
                kept.insert(name.clone(), extra);
            }
        }
        let verified = started.elapsed();

        let docs_path = dir.join(DOCS_FILE);
        let (docs, doc_lines) = match held_docs {
            Some(file) => {
                let light_path = dir.join(LIGHT_DOCS_FILE);
                let docs_len = manifest.files[DOCS_FILE].bytes;
                let (docs, lines) = parse_light_docs(&light_path, &light_bytes, docs_len)?;
                let doc_lines = DocLines {
                    path: docs_path.clone(),
                    spans: lines
                        .iter()
                        .enumerate()
                        .map(|(i, l)| (i, l.start as usize, l.end as usize))
                        .collect(),
                    full: (0..docs.len())
                        .map(|_| std::sync::OnceLock::new())
                        .collect(),
                    source: LinesSource::File {
                        file: std::sync::Mutex::new(file),
                        crc32: lines.iter().map(|l| l.crc32).collect(),
                        light_path,
                    },
                };
                (docs, Some(doc_lines))
            }
            None => {
                let docs = parse_docs(&docs_path, &docs_bytes, light)?;
                let doc_lines = light.then(|| DocLines {
                    path: docs_path.clone(),
                    spans: docs.iter().map(|(span, _)| *span).collect(),
                    full: (0..docs.len())
                        .map(|_| std::sync::OnceLock::new())
                        .collect(),
                    source: LinesSource::Bytes(std::mem::take(&mut docs_bytes)),
                });
                (docs.into_iter().map(|(_, doc)| doc).collect(), doc_lines)
            }
        };
        let checked_path = if deferred {
            dir.join(LIGHT_DOCS_FILE)
        } else {
            docs_path.clone()
        };
        if docs.len() != manifest.count {
            return Err(StylusError::store(
                &checked_path,
                format!(
                    "{} documents, the manifest says {}",
                    docs.len(),
                    manifest.count
                ),
            ));
        }
        let mut by_id = HashMap::with_capacity(docs.len());
        for (i, doc) in docs.iter().enumerate() {
            if by_id.insert(doc.id().clone(), i).is_some() {
                return Err(StylusError::store(
                    &checked_path,
                    format!("adapter {} appears twice", doc.id()),
                ));
            }
        }

        let parsed = started.elapsed();
        let vectors_file = VectorsFile {
            path: dir.join(vectors_name),
            file: std::sync::Mutex::new(held_vectors),
            entry: manifest.files[vectors_name].clone(),
            sparse,
            count: manifest.count,
            dim: manifest.embedder.dim,
        };
        let (vectors, vectors_file) = if deferred {
            (std::sync::OnceLock::new(), Some(Arc::new(vectors_file)))
        } else {
            (vectors_file.parse(&vectors_bytes)?.into(), None)
        };
        tracing::debug!(
            store = %dir.display(),
            docs = manifest.count,
            light = light,
            deferred = deferred,
            verify_ms = verified.as_secs_f64() * 1e3,
            parse_docs_ms = (parsed - verified).as_secs_f64() * 1e3,
            vectors_ms = (started.elapsed() - parsed).as_secs_f64() * 1e3,
            "store read"
        );
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            docs,
            vectors,
            vectors_file,
            by_id,
            kept,
            lines: doc_lines.map(Arc::new),
            postings: postings.map(Arc::new),
        })
    }

    /// Adds (or replaces) files in the store at `dir`, covered by the manifest's checksums. The
    /// files are copied from `sources` (`(name in the store, path of the file to copy)`); the
    /// whole store is swapped in at once, as [`StylusDocs::write`] does. Returns the new manifest.
    /// Docs, vectors and the manifest itself cannot be replaced this way.
    pub fn add_files(dir: &Path, sources: &[(&str, &Path)]) -> Result<Manifest> {
        let mut manifest = read_manifest(dir)?;
        for (name, source) in sources {
            check_extra_name(dir, name)?;
            if is_docs_or_vectors(name) {
                return Err(StylusError::store(
                    dir.join(name),
                    "docs and vectors are written with StylusDocs::write, not added",
                ));
            }
            let entry = hash_file(source)?;
            manifest.files.insert(name.to_string(), entry);
        }
        let new: BTreeSet<&str> = sources.iter().map(|(name, _)| *name).collect();
        replace_dir_atomically(dir, |tmp| {
            for name in manifest.files.keys() {
                if new.contains(name.as_str()) {
                    continue;
                }
                let (from, to) = (dir.join(name), tmp.join(name));
                // A hard link costs nothing; a copy is the fallback (other filesystems).
                if std::fs::hard_link(&from, &to).is_err() {
                    std::fs::copy(&from, &to).map_err(|e| StylusError::io(&from, e))?;
                }
            }
            for (name, source) in sources {
                let to = tmp.join(name);
                std::fs::copy(source, &to).map_err(|e| StylusError::io(*source, e))?;
                // The copy must be what was hashed (the source could change in between).
                if hash_file(&to)? != manifest.files[*name] {
                    return Err(StylusError::store(
                        *source,
                        "file changed while it was added to the store",
                    ));
                }
            }
            write_manifest(tmp, &manifest)
        })?;
        Ok(manifest)
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The id of the embedder that made the vectors.
    pub fn embedder_id(&self) -> &str {
        &self.manifest.embedder.id
    }

    pub fn dim(&self) -> usize {
        self.manifest.embedder.dim
    }

    pub fn len(&self) -> usize {
        self.docs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// The documents, in vector order.
    pub fn docs(&self) -> &[AdapterDoc] {
        &self.docs
    }

    /// All vectors, dense or sparse as stored. After a light open, the first call reads and
    /// checks the vectors file (an error names it).
    pub fn vectors(&self) -> Result<&StoreVectors> {
        if let Some(vectors) = self.vectors.get() {
            return Ok(vectors);
        }
        let file = self.vectors_file.as_ref().ok_or_else(|| {
            StylusError::store(&self.dir, "the store holds no vectors (internal error)")
        })?;
        let vectors = file.read()?;
        Ok(self.vectors.get_or_init(|| vectors))
    }

    /// The vector of document `index` (`dim` values).
    pub fn vector(&self, index: usize) -> Result<std::borrow::Cow<'_, [f32]>> {
        Ok(self.vectors()?.row(index, self.dim()))
    }

    /// The position of an adapter's document.
    pub fn position(&self, id: &AdapterId) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    /// Whether the manifest lists file `name` with exactly these bytes (size and sha256).
    pub fn holds_file(&self, name: &str, bytes: &[u8]) -> bool {
        self.manifest.files.get(name).is_some_and(|entry| {
            entry.bytes == bytes.len() as u64 && entry.sha256 == hex::encode(Sha256::digest(bytes))
        })
    }

    /// The path of a file the manifest lists (verified when the store was opened).
    pub fn file_path(&self, name: &str) -> Option<PathBuf> {
        self.manifest
            .files
            .contains_key(name)
            .then(|| self.dir.join(name))
    }

    /// The bytes of an extra file kept by [`StylusDocs::open_keeping`] (verified against the
    /// manifest when the store was opened); `None` when the store has no such file.
    pub fn kept_file(&self, name: &str) -> Option<&[u8]> {
        self.kept.get(name).map(Vec::as_slice)
    }

    /// The whole documents behind a light open's ([`StylusDocs::open_light`]); `None` after a
    /// full open (the documents are whole already).
    pub fn doc_lines(&self) -> Option<Arc<DocLines>> {
        self.lines.clone()
    }

    /// Takes the bytes of a kept file out of the store (see [`StylusDocs::kept_file`]).
    pub fn take_kept_file(&mut self, name: &str) -> Option<Vec<u8>> {
        self.kept.remove(name)
    }

    /// Splits the store into its documents and its vectors (read already, or when the loader
    /// is run).
    pub fn into_parts(self) -> (Vec<AdapterDoc>, VectorsLoader) {
        let loader = VectorsLoader {
            read: self.vectors.into_inner(),
            file: self.vectors_file,
            postings: self.postings,
        };
        (self.docs, loader)
    }

    /// The stored document of `card` when it is still valid: same adapter id, same card content,
    /// same refiner. Used by incremental refreshes.
    pub fn reusable_doc(&self, card: &AdapterCard, refiner_id: &str) -> Option<usize> {
        let index = self.position(&card.id)?;
        let doc = &self.docs[index];
        // Field-by-field equality: what the card hash compares, without serializing both cards.
        (doc.refiner == refiner_id && doc.card == *card).then_some(index)
    }
}

/// The document lines of a store opened light, each parsed whole when first asked for (and kept).
#[derive(Debug)]
pub struct DocLines {
    path: PathBuf,
    source: LinesSource,
    spans: Vec<DocSpan>,
    full: Vec<std::sync::OnceLock<Arc<AdapterDoc>>>,
}

/// Where [`DocLines`] reads its lines from.
#[derive(Debug)]
enum LinesSource {
    /// docs.jsonl read (and checked whole) at open.
    Bytes(Vec<u8>),
    /// docs.jsonl held open; each line is checked against its CRC-32 from docs.light.jsonl.
    File {
        file: std::sync::Mutex<std::fs::File>,
        crc32: Vec<u32>,
        light_path: PathBuf,
    },
}

impl DocLines {
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Document `index` (in store order), whole. A line that does not match its CRC-32 (the
    /// file changed in place since it was written) or does not parse is an error naming the
    /// file and line.
    pub fn doc(&self, index: usize) -> Result<Arc<AdapterDoc>> {
        if let Some(doc) = self.full.get(index).and_then(|d| d.get()) {
            return Ok(Arc::clone(doc));
        }
        let line = match &self.source {
            LinesSource::Bytes(bytes) => {
                let (_, start, end) = self.span(index)?;
                std::borrow::Cow::Borrowed(&bytes[start..end])
            }
            LinesSource::File { file, .. } => {
                let (_, start, end) = self.span(index)?;
                let mut line = vec![0; end - start];
                let mut file = file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                read_at(&mut file, start as u64, &mut line)
                    .map_err(|e| StylusError::io(&self.path, e))?;
                std::borrow::Cow::Owned(line)
            }
        };
        self.parse_line(index, &line)
    }

    /// Every document, whole (docs.jsonl read once, its lines parsed in parallel).
    pub fn all(&self) -> Result<Vec<Arc<AdapterDoc>>> {
        use rayon::prelude::*;
        let bytes = match &self.source {
            LinesSource::Bytes(bytes) => std::borrow::Cow::Borrowed(bytes),
            LinesSource::File { file, .. } => {
                let mut file = file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let len = self.spans.last().map_or(0, |&(_, _, end)| end);
                let mut bytes = vec![0; len];
                read_at(&mut file, 0, &mut bytes).map_err(|e| StylusError::io(&self.path, e))?;
                std::borrow::Cow::Owned(bytes)
            }
        };
        (0..self.len())
            .into_par_iter()
            .map(|i| match self.full[i].get() {
                Some(doc) => Ok(Arc::clone(doc)),
                None => {
                    let (_, start, end) = self.spans[i];
                    self.parse_line(i, &bytes[start..end])
                }
            })
            .collect()
    }

    fn span(&self, index: usize) -> Result<(usize, usize, usize)> {
        self.spans.get(index).copied().ok_or_else(|| {
            StylusError::store(
                &self.path,
                format!("no document {index} (the store has {})", self.spans.len()),
            )
        })
    }

    /// Checks (against the light documents' CRC-32, when read from the held file) and parses
    /// the line of document `index`, and keeps the document.
    fn parse_line(&self, index: usize, line: &[u8]) -> Result<Arc<AdapterDoc>> {
        let (number, _, _) = self.span(index)?;
        if let LinesSource::File {
            crc32, light_path, ..
        } = &self.source
        {
            let actual = crc32fast::hash(line);
            if actual != crc32[index] {
                return Err(StylusError::store(
                    &self.path,
                    format!(
                        "line {}: crc32 {} does not match {}'s {} (the file changed since it \
                         was written)",
                        number + 1,
                        crc32_hex(actual),
                        light_path.display(),
                        crc32_hex(crc32[index])
                    ),
                ));
            }
        }
        let doc: AdapterDoc = serde_json::from_slice(line).map_err(|e| StylusError::Json {
            path: self.path.clone(),
            line: Some(number + 1),
            message: e.to_string(),
            source: Some(Box::new(e)),
        })?;
        Ok(Arc::clone(self.full[index].get_or_init(|| Arc::new(doc))))
    }
}

/// Reads `buffer.len()` bytes of `file` from `offset`.
pub(crate) fn read_at(
    file: &mut std::fs::File,
    offset: u64,
    buffer: &mut [u8],
) -> std::io::Result<()> {
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(offset))?;
    file.read_exact(buffer)
}

/// The vectors file of a store opened light: held open, read and checked when first needed.
#[derive(Debug)]
struct VectorsFile {
    path: PathBuf,
    /// `None` when the vectors were read at open.
    file: std::sync::Mutex<Option<std::fs::File>>,
    entry: FileEntry,
    sparse: bool,
    count: usize,
    dim: usize,
}

impl VectorsFile {
    /// Reads the held file whole, checks it against the manifest and parses it.
    fn read(&self) -> Result<StoreVectors> {
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let file = guard.as_mut().ok_or_else(|| {
            StylusError::store(&self.path, "the vectors file is not held (internal error)")
        })?;
        let mut bytes = vec![0; self.entry.bytes as usize];
        read_at(file, 0, &mut bytes).map_err(|e| StylusError::io(&self.path, e))?;
        drop(guard);
        check_bytes(&self.path, &self.entry, &bytes)?;
        self.parse(&bytes)
    }

    /// Parses the (checked) bytes of the vectors file.
    fn parse(&self, bytes: &[u8]) -> Result<StoreVectors> {
        if self.sparse {
            return read_sparse(&self.path, bytes, self.count, self.dim);
        }
        let (shape, vectors) = read_f32_tensor(&self.path, bytes, VECTORS_TENSOR)?;
        let expected = [self.count, self.dim];
        if shape != expected {
            return Err(StylusError::store(
                &self.path,
                format!("tensor shape {shape:?}, the manifest says {expected:?}"),
            ));
        }
        Ok(StoreVectors::Dense(vectors))
    }
}

/// A store's vectors, split off by [`StylusDocs::into_parts`]: read already, or read and checked
/// by [`VectorsLoader::load`] (after a light open), so a search that never needs them never
/// reads them.
#[derive(Debug)]
pub struct VectorsLoader {
    read: Option<StoreVectors>,
    file: Option<Arc<VectorsFile>>,
    postings: Option<Arc<PostingsFile>>,
}

impl VectorsLoader {
    /// The vectors by dimension, read list by list as searches need them, when the store was
    /// opened light and has them ([`POSTINGS_FILE`]; older stores do not): a sparse index over
    /// them needs no [`VectorsLoader::load`].
    pub fn postings(&self) -> Option<Arc<dyn PostingLists>> {
        self.postings
            .clone()
            .map(|postings| postings as Arc<dyn PostingLists>)
    }

    pub fn load(self) -> Result<StoreVectors> {
        match (self.read, self.file) {
            (Some(vectors), _) => Ok(vectors),
            (None, Some(file)) => file.read(),
            (None, None) => Err(StylusError::InvalidArgument(
                "a store without vectors (internal error)".into(),
            )),
        }
    }
}

/// Opens `path` for later reads after checking its size against the manifest.
fn open_sized(path: &Path, entry: &FileEntry) -> Result<std::fs::File> {
    let file = std::fs::File::open(path).map_err(|e| missing_or_io(path, e))?;
    let len = file.metadata().map_err(|e| StylusError::io(path, e))?.len();
    check_size(path, entry, len)?;
    Ok(file)
}

/// A document's line number (from 0) and byte range in docs.jsonl.
type DocSpan = (usize, usize, usize);

/// The documents of docs.jsonl (whole, or light), each with its line number and byte range.
fn parse_docs(path: &Path, bytes: &[u8], light: bool) -> Result<Vec<(DocSpan, AdapterDoc)>> {
    use rayon::prelude::*;
    // (line number, byte offset, line) of every non-empty line.
    let mut lines: Vec<(usize, usize, &[u8])> = Vec::new();
    let mut offset = 0;
    for (index, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if !line.is_empty() {
            lines.push((index, offset, line));
        }
        offset += line.len() + 1;
    }
    // Lines are parsed in parallel: JSON parsing is most of an open's time.
    lines
        .par_iter()
        .map(|&(index, start, line)| {
            let json_error = |e: serde_json::Error| StylusError::Json {
                path: path.to_path_buf(),
                line: Some(index + 1),
                message: e.to_string(),
                source: Some(Box::new(e)),
            };
            let doc = if light {
                serde_json::from_slice::<LightDoc>(line)
                    .map(LightDoc::into_doc)
                    .map_err(json_error)?
            } else {
                serde_json::from_slice(line).map_err(json_error)?
            };
            Ok(((index, start, start + line.len()), doc))
        })
        .collect()
}

/// The documents of docs.light.jsonl and where each one's line lies in docs.jsonl (of
/// `docs_len` bytes): spans in order, inside the file, not overlapping.
fn parse_light_docs(
    path: &Path,
    bytes: &[u8],
    docs_len: u64,
) -> Result<(Vec<AdapterDoc>, Vec<LineRef>)> {
    use rayon::prelude::*;
    let lines: Vec<(usize, &[u8])> = bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .collect();
    let parsed: Vec<(AdapterDoc, LineRef)> = lines
        .par_iter()
        .map(|&(index, line)| {
            let json_error = |message: String| StylusError::Json {
                path: path.to_path_buf(),
                line: Some(index + 1),
                message,
                source: None,
            };
            let light: LightDoc =
                serde_json::from_slice(line).map_err(|e| json_error(e.to_string()))?;
            let line = light.line.ok_or_else(|| {
                json_error("no `line` (the document's place in docs.jsonl)".into())
            })?;
            Ok((light.into_doc(), line))
        })
        .collect::<Result<_>>()?;
    let mut previous_end = 0;
    for (number, (_, line)) in parsed.iter().enumerate() {
        if line.start < previous_end || line.start >= line.end || line.end > docs_len {
            return Err(StylusError::store(
                path,
                format!(
                    "document {}: line bytes {}..{} are out of order or outside {DOCS_FILE} \
                     ({docs_len} bytes)",
                    number + 1,
                    line.start,
                    line.end
                ),
            ));
        }
        previous_end = line.end;
    }
    Ok(parsed.into_iter().unzip())
}

/// The short fields of an [`AdapterDoc`]: a line of docs.light.jsonl, and what a light open of
/// an older store parses from docs.jsonl (unknown fields, there the long texts, are skipped by
/// serde without being copied).
#[derive(Serialize, Deserialize)]
struct LightDoc {
    card: LightCard,
    recommended_weight: f32,
    category: Category,
    refiner: String,
    /// Where the whole document lies in docs.jsonl (docs.light.jsonl only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    line: Option<LineRef>,
}

/// The byte range `start..end` of a document's line in docs.jsonl (without its newline) and the
/// line's CRC-32, written as `[start, end, crc32]`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(from = "(u64, u64, u32)", into = "(u64, u64, u32)")]
struct LineRef {
    start: u64,
    end: u64,
    crc32: u32,
}

impl From<(u64, u64, u32)> for LineRef {
    fn from((start, end, crc32): (u64, u64, u32)) -> Self {
        Self { start, end, crc32 }
    }
}

impl From<LineRef> for (u64, u64, u32) {
    fn from(line: LineRef) -> Self {
        (line.start, line.end, line.crc32)
    }
}

#[derive(Serialize, Deserialize)]
struct LightCard {
    id: AdapterId,
    #[serde(default)]
    version_id: Option<u64>,
    title: String,
    #[serde(default)]
    alias: Option<String>,
    adapter_type: String,
    #[serde(default)]
    base_model: Option<BaseModel>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    trigger_words: Vec<String>,
    #[serde(default)]
    nsfw: bool,
    #[serde(default)]
    poi: bool,
    #[serde(default)]
    file: Option<AdapterFile>,
    #[serde(default)]
    stats: AdapterStats,
    #[serde(default)]
    image_count: usize,
}

impl LightDoc {
    fn of(doc: &AdapterDoc, line: LineRef) -> Self {
        let c = &doc.card;
        Self {
            card: LightCard {
                id: c.id.clone(),
                version_id: c.version_id,
                title: c.title.clone(),
                alias: c.alias.clone(),
                adapter_type: c.adapter_type.clone(),
                base_model: c.base_model.clone(),
                tags: c.tags.clone(),
                trigger_words: c.trigger_words.clone(),
                nsfw: c.nsfw,
                poi: c.poi,
                file: c.file.clone(),
                stats: c.stats.clone(),
                image_count: c.image_count,
            },
            recommended_weight: doc.recommended_weight,
            category: doc.category,
            refiner: doc.refiner.clone(),
            line: Some(line),
        }
    }

    fn into_doc(self) -> AdapterDoc {
        let c = self.card;
        let mut card = AdapterCard::new(c.id, c.title, c.adapter_type);
        card.version_id = c.version_id;
        card.alias = c.alias;
        card.base_model = c.base_model;
        card.tags = c.tags;
        card.trigger_words = c.trigger_words;
        card.nsfw = c.nsfw;
        card.poi = c.poi;
        card.file = c.file;
        card.stats = c.stats;
        card.image_count = c.image_count;
        AdapterDoc {
            card,
            description: String::new(),
            recommended_weight: self.recommended_weight,
            category: self.category,
            embedding_text: String::new(),
            refiner: self.refiner,
        }
    }
}

/// An exclusive lock on the store at a directory, held by a process that writes it (`stylus
/// index`, `retrieve --build-hnsw`). The lock is an OS file lock (`flock`) on a hidden sibling
/// file `.NAME.lock` beside the store (not inside it: the store directory is swapped whole), so a
/// crashed writer never leaves a stale lock. Dropping the guard removes the file and releases it.
#[derive(Debug)]
pub struct StoreLock {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl StoreLock {
    /// The lock file of the store at `dir`.
    pub fn path_for(dir: &Path) -> Result<PathBuf> {
        let (parent, name) = parent_and_name(dir)?;
        Ok(parent.join(format!(".{name}.lock")))
    }

    /// Takes the lock or fails at once (another writer holds it) with a
    /// [`StylusError::Store`] that says so.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = Self::path_for(dir)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StylusError::io(parent, e))?;
        }
        // The holder removes the file when it is done; a file we opened just before that removal
        // is locked in vain, so the lock only counts when the path is still our file.
        for _ in 0..100 {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| StylusError::io(&path, e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(StylusError::store(
                        dir,
                        format!(
                            "another stylus process is writing this store (lock {} is held); \
                             wait for it to finish and run again",
                            path.display()
                        ),
                    ));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(StylusError::io(&path, e)),
            }
            if same_file(&file, &path) {
                use std::io::Write as _;
                let mut file = file;
                let _ = writeln!(file, "{}", std::process::id());
                return Ok(Self {
                    path,
                    file: Some(file),
                });
            }
        }
        Err(StylusError::store(
            dir,
            format!("could not take the lock {}", path.display()),
        ))
    }

    /// When a writer holds the lock of the store at `dir`, waits (up to 10 s) until it is done
    /// and returns `true`; `false` at once when no writer was there.
    pub fn wait_for_writer(dir: &Path) -> bool {
        let Ok(path) = Self::path_for(dir) else {
            return false;
        };
        let Ok(file) = std::fs::File::open(&path) else {
            return false;
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut waited = false;
        loop {
            match file.try_lock_shared() {
                Ok(()) => return waited,
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    waited = true;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(_) => return false,
            }
        }
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        // Remove first, then release: a waiting writer that got the old file retries.
        let _ = std::fs::remove_file(&self.path);
        drop(self.file.take());
    }
}

/// Whether `path` still names the open `file` (same device and inode).
fn same_file(file: &std::fs::File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        path.exists()
    }
}

/// The parent directory (`.` for a bare name) and the file name of a store directory.
fn parent_and_name(dir: &Path) -> Result<(PathBuf, String)> {
    let name = dir
        .file_name()
        .ok_or_else(|| StylusError::store(dir, "a store needs a directory name"))?
        .to_string_lossy()
        .into_owned();
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name))
}

/// The content hash of a card (sha256 of its JSON form): a changed card is refined again.
pub fn card_hash(card: &AdapterCard) -> String {
    let json = serde_json::to_vec(card).expect("cards always serialize");
    hex::encode(Sha256::digest(json))
}

/// A safetensors file holding one f32 tensor.
pub fn f32_tensor_bytes(name: &str, shape: &[usize], data: &[f32]) -> Vec<u8> {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = TensorView::new(Dtype::F32, shape.to_vec(), &bytes)
        .expect("callers pass data matching the shape");
    safetensors::serialize([(name, view)], None).expect("one small header always serializes")
}

/// Row offsets, dimensions and values of the non-zeros of dense rows of `dim` values.
fn csr_of(dim: usize, dense: &[f32]) -> (Vec<u64>, Vec<u32>, Vec<f32>) {
    let rows = dense.len() / dim.max(1);
    let mut indptr = Vec::with_capacity(rows + 1);
    let mut indices = Vec::new();
    let mut values = Vec::new();
    indptr.push(0);
    for row in dense.chunks_exact(dim.max(1)) {
        for (d, &v) in row.iter().enumerate() {
            if v != 0.0 {
                indices.push(d as u32);
                values.push(v);
            }
        }
        indptr.push(indices.len() as u64);
    }
    (indptr, indices, values)
}

/// The safetensors file of sparse vectors (`indptr`, `indices`, `values`).
fn sparse_tensor_bytes(indptr: &[u64], indices: &[u32], values: &[f32]) -> Vec<u8> {
    let indptr_bytes: Vec<u8> = indptr.iter().flat_map(|v| v.to_le_bytes()).collect();
    let indices_bytes: Vec<u8> = indices.iter().flat_map(|v| v.to_le_bytes()).collect();
    let values_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let views = [
        (
            "indptr",
            TensorView::new(Dtype::U64, vec![indptr.len()], &indptr_bytes),
        ),
        (
            "indices",
            TensorView::new(Dtype::U32, vec![indices.len()], &indices_bytes),
        ),
        (
            "values",
            TensorView::new(Dtype::F32, vec![values.len()], &values_bytes),
        ),
    ];
    let views: Vec<(&str, TensorView<'_>)> = views
        .into_iter()
        .map(|(name, view)| (name, view.expect("shapes match the data")))
        .collect();
    safetensors::serialize(views, None).expect("three small headers always serialize")
}

/// Reads and checks sparse vectors: `count + 1` non-decreasing offsets ending at the number of
/// values, dimensions increasing within a row and below `dim`.
fn read_sparse(path: &Path, bytes: &[u8], count: usize, dim: usize) -> Result<StoreVectors> {
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| StylusError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
        source: Some(Box::new(e)),
    })?;
    let tensor = |name: &str, dtype: Dtype| -> Result<&[u8]> {
        let view = tensors
            .tensor(name)
            .map_err(|e| StylusError::tensor(path, name, e.to_string()))?;
        if view.dtype() != dtype || view.shape().len() != 1 {
            return Err(StylusError::tensor(
                path,
                name,
                format!(
                    "dtype {:?} shape {:?}, expected a {dtype:?} vector",
                    view.dtype(),
                    view.shape()
                ),
            ));
        }
        Ok(view.data())
    };
    let indptr: Vec<u64> = tensor("indptr", Dtype::U64)?
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect();
    let indices: Vec<u32> = tensor("indices", Dtype::U32)?
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect();
    let values: Vec<f32> = tensor("values", Dtype::F32)?
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect();
    let bad = |message: String| Err(StylusError::store(path, message));
    if indptr.len() != count + 1 {
        return bad(format!(
            "{} row offsets, the manifest's count needs {}",
            indptr.len(),
            count + 1
        ));
    }
    if indices.len() != values.len() || indptr.last().copied() != Some(values.len() as u64) {
        return bad(format!(
            "{} indices and {} values, the offsets end at {:?}",
            indices.len(),
            values.len(),
            indptr.last()
        ));
    }
    for (row, pair) in indptr.windows(2).enumerate() {
        let (a, b) = (pair[0] as usize, pair[1] as usize);
        if a > b {
            return bad(format!("row {row}: offsets decrease"));
        }
        let dims = &indices[a..b];
        if dims.windows(2).any(|w| w[0] >= w[1]) || dims.last().is_some_and(|&d| d as usize >= dim)
        {
            return bad(format!(
                "row {row}: dimensions not increasing or not below {dim}"
            ));
        }
    }
    Ok(StoreVectors::Sparse {
        indptr,
        indices,
        values,
    })
}

/// Reads the f32 tensor `name` of a safetensors file's bytes; returns its shape and values.
pub fn read_f32_tensor(path: &Path, bytes: &[u8], name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| StylusError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
        source: Some(Box::new(e)),
    })?;
    let view = tensors
        .tensor(name)
        .map_err(|e| StylusError::tensor(path, name, e.to_string()))?;
    if view.dtype() != Dtype::F32 {
        return Err(StylusError::tensor(
            path,
            name,
            format!("dtype {:?}, expected F32", view.dtype()),
        ));
    }
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((view.shape().to_vec(), values))
}

fn is_docs_or_vectors(name: &str) -> bool {
    [
        DOCS_FILE,
        LIGHT_DOCS_FILE,
        VECTORS_FILE,
        SPARSE_VECTORS_FILE,
        POSTINGS_FILE,
    ]
    .contains(&name)
}

fn check_extra_name(dir: &Path, name: &str) -> Result<()> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && !name.starts_with('.');
    if !plain || name == MANIFEST_FILE {
        return Err(StylusError::store(
            dir,
            format!("`{name}` is not a valid store file name"),
        ));
    }
    Ok(())
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            StylusError::store(
                &path,
                "missing: not a StylusDocs store (run `stylus index`)",
            )
        } else {
            StylusError::io(&path, e)
        }
    })?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| StylusError::store(&path, format!("unreadable manifest: {e}")))?;
    if manifest.format != FORMAT || manifest.format_version != FORMAT_VERSION {
        return Err(StylusError::store(
            &path,
            format!(
                "format {} v{}, this build reads {FORMAT} v{FORMAT_VERSION}",
                manifest.format, manifest.format_version
            ),
        ));
    }
    for name in manifest.files.keys() {
        check_extra_name(dir, name)?;
    }
    Ok(manifest)
}

fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let mut json = serde_json::to_vec_pretty(manifest).expect("manifests always serialize");
    json.push(b'\n');
    write_synced(&dir.join(MANIFEST_FILE), &json)
}

/// What identifies the directory at `dir` (device and inode on Unix): a store swapped in by a
/// writer is another directory.
fn dir_identity(dir: &Path) -> Option<(u64, u64)> {
    let metadata = std::fs::metadata(dir).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((metadata.dev(), metadata.ino()))
    }
    #[cfg(not(unix))]
    {
        metadata.modified().ok().map(|t| {
            let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            (d.as_secs(), u64::from(d.subsec_nanos()))
        })
    }
}

/// Checks a file's size and checksum; keeps its bytes in `keep` when given.
fn verify_file(path: &Path, entry: &FileEntry, keep: Option<&mut Vec<u8>>) -> Result<()> {
    let metadata = std::fs::metadata(path).map_err(|e| missing_or_io(path, e))?;
    check_size(path, entry, metadata.len())?;
    let mut own = Vec::new();
    let buffer = keep.unwrap_or(&mut own);
    *buffer = std::fs::read(path).map_err(|e| StylusError::io(path, e))?;
    check_bytes(path, entry, buffer)
}

fn missing_or_io(path: &Path, e: std::io::Error) -> StylusError {
    if e.kind() == std::io::ErrorKind::NotFound {
        StylusError::store(path, "missing (listed in the manifest)")
    } else {
        StylusError::io(path, e)
    }
}

fn check_size(path: &Path, entry: &FileEntry, len: u64) -> Result<()> {
    if len != entry.bytes {
        return Err(StylusError::store(
            path,
            format!(
                "{len} bytes, the manifest says {} (truncated or replaced)",
                entry.bytes
            ),
        ));
    }
    Ok(())
}

/// Checks `bytes` (a file's whole content) against the manifest's CRC-32, or its sha256 for
/// stores written without CRCs.
fn check_bytes(path: &Path, entry: &FileEntry, bytes: &[u8]) -> Result<()> {
    check_size(path, entry, bytes.len() as u64)?;
    let (kind, actual, expected) = match &entry.crc32 {
        Some(crc) => ("crc32", crc32_hex(crc32_parallel(bytes)), crc),
        None => ("sha256", hex::encode(Sha256::digest(bytes)), &entry.sha256),
    };
    if actual != *expected {
        return Err(StylusError::store(
            path,
            format!("{kind} {actual} does not match the manifest's {expected}"),
        ));
    }
    Ok(())
}

/// The CRC-32 of `bytes`, over 4 MiB blocks in parallel (combined as one CRC of the whole).
fn crc32_parallel(bytes: &[u8]) -> u32 {
    use rayon::prelude::*;
    const BLOCK: usize = 4 << 20;
    bytes
        .par_chunks(BLOCK)
        .map(|block| {
            let mut h = crc32fast::Hasher::new();
            h.update(block);
            h
        })
        .reduce(crc32fast::Hasher::new, |mut a, b| {
            a.combine(&b);
            a
        })
        .finalize()
}

/// Size and checksums of a file, streamed.
fn hash_file(path: &Path) -> Result<FileEntry> {
    let mut file = std::fs::File::open(path).map_err(|e| StylusError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut crc = crc32fast::Hasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(|e| StylusError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        crc.update(&buffer[..n]);
        bytes += n as u64;
    }
    Ok(FileEntry {
        sha256: hex::encode(hasher.finalize()),
        bytes,
        crc32: Some(crc32_hex(crc.finalize())),
    })
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = std::fs::File::create(path).map_err(|e| StylusError::io(path, e))?;
    file.write_all(bytes)
        .map_err(|e| StylusError::io(path, e))?;
    file.sync_all().map_err(|e| StylusError::io(path, e))
}

/// Fills a temporary sibling of `dir` with `fill`, then swaps it in for `dir`: the old store (if
/// any) is renamed aside and removed. On error the temporary directory is removed and `dir` is
/// untouched.
fn replace_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let (parent, name) = parent_and_name(dir)?;
    if dir.exists() {
        let is_store = dir.join(MANIFEST_FILE).is_file();
        let empty = std::fs::read_dir(dir)
            .map_err(|e| StylusError::io(dir, e))?
            .next()
            .is_none();
        if !is_store && !empty {
            return Err(StylusError::store(
                dir,
                "exists and is not a StylusDocs store; refusing to replace it",
            ));
        }
    } else {
        std::fs::create_dir_all(&parent).map_err(|e| StylusError::io(&parent, e))?;
    }
    let unique = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let tmp = parent.join(format!(".{name}.tmp-{unique}"));
    std::fs::create_dir(&tmp).map_err(|e| StylusError::io(&tmp, e))?;
    if let Err(err) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(err);
    }
    let old = parent.join(format!(".{name}.old-{unique}"));
    let had_old = dir.exists();
    if had_old {
        std::fs::rename(dir, &old).map_err(|e| StylusError::io(dir, e))?;
    }
    if let Err(e) = std::fs::rename(&tmp, dir) {
        if had_old {
            let _ = std::fs::rename(&old, dir);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(StylusError::io(dir, e));
    }
    if had_old && let Err(e) = std::fs::remove_dir_all(&old) {
        tracing::warn!(path = %old.display(), error = %e, "could not remove the replaced store");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use stylus_core::Category;

    use super::*;

    fn doc(id: u64) -> AdapterDoc {
        let card = AdapterCard::new(AdapterId::Civitai(id), format!("card {id}"), "LORA");
        AdapterDoc {
            card,
            description: format!("description {id}"),
            recommended_weight: 0.7,
            category: Category::Style,
            embedding_text: format!("text {id}"),
            refiner: "card".into(),
        }
    }

    fn new_store(n: u64) -> NewStore {
        NewStore {
            embedder_id: "test-embedder".into(),
            dim: 3,
            docs: (0..n).map(doc).collect(),
            vectors: (0..n * 3).map(|v| v as f32 / 7.0).collect(),
            extra_files: vec![ExtraFile {
                name: "extra.bin".into(),
                bytes: vec![1, 2, 3],
            }],
        }
    }

    #[test]
    fn write_open_round_trip() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("store");
        let written = StylusDocs::write(&dir, new_store(4)).unwrap();
        let opened = StylusDocs::open(&dir).unwrap();
        assert_eq!(opened.docs(), written.docs());
        assert_eq!(opened.vectors().unwrap(), written.vectors().unwrap());
        assert_eq!(opened.manifest(), written.manifest());
        assert_eq!(
            opened.vector(2).unwrap().as_ref(),
            &[6.0 / 7.0, 1.0, 8.0 / 7.0]
        );
        assert_eq!(opened.position(&AdapterId::Civitai(3)), Some(3));
        assert_eq!(opened.embedder_id(), "test-embedder");
        assert_eq!(opened.manifest().refiners, ["card"]);
        assert_eq!(
            std::fs::read(opened.file_path("extra.bin").unwrap()).unwrap(),
            [1, 2, 3]
        );
        // Nothing but the store is left in the parent.
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);

        // Rewriting replaces it whole.
        StylusDocs::write(
            &dir,
            NewStore {
                extra_files: vec![],
                ..new_store(1)
            },
        )
        .unwrap();
        let opened = StylusDocs::open(&dir).unwrap();
        assert_eq!(opened.len(), 1);
        assert!(opened.file_path("extra.bin").is_none());
        assert!(!dir.join("extra.bin").exists());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }

    /// A store of 4 documents whose 50-dim vectors are zero but at `(row, dimension, value)`.
    fn sparse_store(non_zeros: &[(usize, usize, f32)]) -> NewStore {
        let dim = 50;
        let mut store = new_store(4);
        store.dim = dim;
        store.vectors = vec![0.0; 4 * dim];
        for &(row, d, v) in non_zeros {
            store.vectors[row * dim + d] = v;
        }
        store
    }

    #[test]
    fn mostly_zero_vectors_are_stored_sparse_and_read_back_exactly() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("sparse");
        let dim = 50;
        let store = sparse_store(&[(0, 3, 0.5), (0, 49, -1.0), (2, 0, 2.0), (3, 7, 0.25)]);
        let dense = store.vectors.clone();
        let written = StylusDocs::write(&dir, store).unwrap();
        assert!(dir.join(SPARSE_VECTORS_FILE).is_file());
        assert!(!dir.join(VECTORS_FILE).exists());
        let opened = StylusDocs::open(&dir).unwrap();
        assert_eq!(opened.vectors().unwrap(), written.vectors().unwrap());
        assert_eq!(opened.vectors().unwrap().to_dense(4, dim), dense);
        assert_eq!(opened.vector(1).unwrap().as_ref(), &vec![0.0; dim][..]);
        assert_eq!(opened.vector(0).unwrap()[49], -1.0);

        // A damaged offset table is an error naming the file (checksums fixed up to reach it).
        let path = dir.join(SPARSE_VECTORS_FILE);
        let bad = sparse_tensor_bytes(&[0, 2, 1, 3, 4], &[3, 49, 0, 7], &[0.5, -1.0, 2.0, 0.25]);
        std::fs::write(&path, bad).unwrap();
        let mut manifest: Manifest =
            serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
        manifest
            .files
            .insert(SPARSE_VECTORS_FILE.to_string(), hash_file(&path).unwrap());
        write_manifest(&dir, &manifest).unwrap();
        let err = StylusDocs::open(&dir).unwrap_err().to_string();
        assert!(
            err.contains(SPARSE_VECTORS_FILE) && err.contains("offsets"),
            "{err}"
        );
    }

    #[test]
    fn sparse_stores_carry_their_postings_and_a_light_open_hands_them_out() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("sparse");
        let dim = 50;
        let store = sparse_store(&[(0, 3, 0.5), (0, 49, -1.0), (2, 3, 2.0), (3, 7, 0.25)]);
        StylusDocs::write(&dir, store).unwrap();
        let (_, loader) = StylusDocs::open_light(&dir, &[]).unwrap().into_parts();
        let postings = loader.postings().unwrap();
        assert_eq!((postings.dim(), postings.docs()), (dim, 4));
        assert_eq!(postings.list(3).unwrap(), &[(0, 0.5), (2, 2.0)]);
        assert_eq!(postings.list(49).unwrap(), &[(0, -1.0)]);
        assert!(postings.list(0).unwrap().is_empty());
        // A full open reads and checks the file with the others, and hands out no postings.
        let (_, loader) = StylusDocs::open(&dir).unwrap().into_parts();
        assert!(loader.postings().is_none());
        // Stores written before the postings file existed open without one.
        std::fs::remove_file(dir.join(POSTINGS_FILE)).unwrap();
        let mut manifest = read_manifest(&dir).unwrap();
        manifest.files.remove(POSTINGS_FILE);
        write_manifest(&dir, &manifest).unwrap();
        let (_, loader) = StylusDocs::open_light(&dir, &[]).unwrap().into_parts();
        assert!(loader.postings().is_none());
        assert_eq!(loader.load().unwrap().to_dense(4, dim)[3 * dim + 7], 0.25);
        // Dense stores have none.
        let dense = root.path().join("dense");
        StylusDocs::write(&dense, new_store(2)).unwrap();
        assert!(!dense.join(POSTINGS_FILE).exists());
    }

    #[test]
    fn a_reader_waits_out_a_writer_caught_mid_swap() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("store");
        StylusDocs::write(&dir, new_store(2)).unwrap();
        let lock = StoreLock::acquire(&dir).unwrap();
        // A second writer fails at once, naming the lock.
        let err = StoreLock::acquire(&dir).unwrap_err().to_string();
        assert!(err.contains("another stylus process"), "{err}");
        // The writer between its two renames: no store at `dir` for a moment.
        let aside = root.path().join(".store.old");
        std::fs::rename(&dir, &aside).unwrap();
        let writer = std::thread::spawn({
            let (dir, aside) = (dir.clone(), aside.clone());
            move || {
                std::thread::sleep(std::time::Duration::from_millis(200));
                std::fs::rename(&aside, &dir).unwrap();
                drop(lock);
            }
        });
        let opened = StylusDocs::open(&dir).unwrap();
        assert_eq!(opened.len(), 2);
        writer.join().unwrap();
        // The lock file is gone with its holder; the next writer gets it.
        assert!(!StoreLock::path_for(&dir).unwrap().exists());
        drop(StoreLock::acquire(&dir).unwrap());
        // Without a writer, a broken store is an error at once.
        std::fs::remove_file(dir.join(MANIFEST_FILE)).unwrap();
        assert!(StylusDocs::open(&dir).is_err());
    }

    #[test]
    fn a_light_open_gives_short_fields_now_and_whole_documents_on_demand() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("store");
        let mut store = new_store(3);
        store.docs[1].card.tags = vec!["ink".into()];
        store.docs[1].card.sample_prompts = vec!["a long prompt".into()];
        store.docs[1].card.nsfw = true;
        let written = StylusDocs::write(&dir, store).unwrap();
        let light = StylusDocs::open_light(&dir, &["extra.bin"]).unwrap();
        assert_eq!(light.kept_file("extra.bin"), Some(&[1u8, 2, 3][..]));
        assert!(StylusDocs::open(&dir).unwrap().doc_lines().is_none());
        let lines = light.doc_lines().unwrap();
        assert_eq!(lines.len(), 3);
        for (i, (short, whole)) in light.docs().iter().zip(written.docs()).enumerate() {
            assert_eq!(short.id(), whole.id());
            assert_eq!(short.card.tags, whole.card.tags);
            assert_eq!(short.card.nsfw, whole.card.nsfw);
            assert_eq!(short.category, whole.category);
            assert!(short.description.is_empty() && short.card.sample_prompts.is_empty());
            assert_eq!(*lines.doc(i).unwrap(), *whole);
        }
        assert_eq!(
            lines
                .all()
                .unwrap()
                .iter()
                .map(|d| (**d).clone())
                .collect::<Vec<_>>(),
            written.docs()
        );
        assert!(lines.doc(3).is_err());
    }

    /// Rewrites `name` in the store at `dir` and its manifest entry, as a writer would.
    fn replace_file(dir: &Path, name: &str, bytes: &[u8]) {
        std::fs::write(dir.join(name), bytes).unwrap();
        let mut manifest = read_manifest(dir).unwrap();
        manifest.files.insert(name.into(), FileEntry::of(bytes));
        write_manifest(dir, &manifest).unwrap();
    }

    #[test]
    fn a_light_open_checks_each_document_and_the_vectors_when_they_are_read() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("store");
        let written = StylusDocs::write(&dir, new_store(3)).unwrap();
        // The file changes in place after the store was written, keeping its size: a light
        // open does not read it, so it opens; the changed document and the vectors do not.
        let docs = std::fs::read_to_string(dir.join(DOCS_FILE)).unwrap();
        let second = docs.lines().nth(1).unwrap();
        let changed = second.replacen(
            written.docs()[1].card.title.as_str(),
            &"X".repeat(written.docs()[1].card.title.len()),
            1,
        );
        assert_ne!(changed, second);
        std::fs::write(dir.join(DOCS_FILE), docs.replacen(second, &changed, 1)).unwrap();
        let mut vectors = std::fs::read(dir.join(VECTORS_FILE)).unwrap();
        let last = vectors.len() - 1;
        vectors[last] ^= 0x40;
        std::fs::write(dir.join(VECTORS_FILE), &vectors).unwrap();

        let light = StylusDocs::open_light(&dir, &[]).unwrap();
        assert_eq!(light.docs()[1].card.title, written.docs()[1].card.title);
        let lines = light.doc_lines().unwrap();
        assert_eq!(*lines.doc(0).unwrap(), written.docs()[0]);
        assert_eq!(*lines.doc(2).unwrap(), written.docs()[2]);
        let err = lines.doc(1).unwrap_err().to_string();
        assert!(
            err.contains(DOCS_FILE) && err.contains("line 2") && err.contains("crc32"),
            "{err}"
        );
        assert!(lines.all().is_err());
        let err = light.vectors().unwrap_err().to_string();
        assert!(err.contains(VECTORS_FILE) && err.contains("crc32"), "{err}");
        let (_, loader) = light.into_parts();
        assert!(loader.load().is_err());
        // A full open checks every file at once.
        let err = StylusDocs::open(&dir).unwrap_err().to_string();
        assert!(err.contains("crc32"), "{err}");
    }

    #[test]
    fn a_light_open_holds_the_files_of_the_store_it_opened() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("store");
        let first = StylusDocs::write(&dir, new_store(3)).unwrap();
        let light = StylusDocs::open_light(&dir, &[]).unwrap();
        // A writer swaps in another store before the reader asks for documents and vectors.
        let mut other = new_store(2);
        other.docs[0].description = "another store".into();
        StylusDocs::write(&dir, other).unwrap();
        let lines = light.doc_lines().unwrap();
        assert_eq!(*lines.doc(0).unwrap(), first.docs()[0]);
        assert_eq!(light.vectors().unwrap(), first.vectors().unwrap());
    }

    #[test]
    fn a_malformed_document_names_its_line_and_keeps_the_parser_error_as_its_source() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("store");
        StylusDocs::write(&dir, new_store(2)).unwrap();
        let docs = std::fs::read_to_string(dir.join(DOCS_FILE)).unwrap();
        let second = docs.lines().nth(1).unwrap();
        replace_file(
            &dir,
            DOCS_FILE,
            docs.replacen(second, "{\"card\": 7}", 1).as_bytes(),
        );
        let err = StylusDocs::open(&dir).unwrap_err();
        assert!(err.to_string().contains(":2: malformed JSON"), "{err}");
        let source = std::error::Error::source(&err).expect("the parser's error");
        assert!(source.downcast_ref::<serde_json::Error>().is_some());
    }

    #[test]
    fn stores_without_light_documents_open_light_from_docs_jsonl() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("store");
        let written = StylusDocs::write(&dir, new_store(3)).unwrap();
        std::fs::remove_file(dir.join(LIGHT_DOCS_FILE)).unwrap();
        let mut manifest = read_manifest(&dir).unwrap();
        manifest.files.remove(LIGHT_DOCS_FILE);
        write_manifest(&dir, &manifest).unwrap();
        let light = StylusDocs::open_light(&dir, &[]).unwrap();
        assert_eq!(light.docs()[2].id(), written.docs()[2].id());
        assert_eq!(
            *light.doc_lines().unwrap().doc(2).unwrap(),
            written.docs()[2]
        );
        assert_eq!(light.vectors().unwrap(), written.vectors().unwrap());
    }

    #[test]
    fn light_documents_that_point_outside_docs_jsonl_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("store");
        StylusDocs::write(&dir, new_store(2)).unwrap();
        let light = std::fs::read_to_string(dir.join(LIGHT_DOCS_FILE)).unwrap();
        let mut rows: Vec<serde_json::Value> = light
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let cases: [(&str, serde_json::Value); 3] = [
            ("out of order", serde_json::json!([0, 5, 0])),
            ("past the end", serde_json::json!([10, 1_000_000, 0])),
            ("no line", serde_json::Value::Null),
        ];
        for (what, line) in cases {
            let original = rows[1]["line"].clone();
            match &line {
                serde_json::Value::Null => {
                    rows[1].as_object_mut().unwrap().remove("line");
                }
                _ => rows[1]["line"] = line.clone(),
            }
            let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
            replace_file(&dir, LIGHT_DOCS_FILE, text.as_bytes());
            let err = StylusDocs::open_light(&dir, &[]).unwrap_err().to_string();
            assert!(err.contains(LIGHT_DOCS_FILE), "{what}: {err}");
            rows[1]["line"] = original;
        }
    }

    #[test]
    fn block_parallel_crc32_is_the_crc32_of_the_whole() {
        let bytes: Vec<u8> = (0..(9u32 << 20) + 13)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        assert_eq!(crc32_parallel(&bytes), crc32fast::hash(&bytes));
        assert_eq!(crc32_parallel(&[]), crc32fast::hash(&[]));
        assert_eq!(FileEntry::of(b"abc").crc32.as_deref(), Some("352441c2"));
    }

    #[test]
    fn empty_store_round_trips() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("empty");
        StylusDocs::write(&dir, new_store(0)).unwrap();
        let opened = StylusDocs::open(&dir).unwrap();
        assert!(opened.is_empty());
        assert_eq!(opened.dim(), 3);
    }

    #[test]
    fn corrupt_stores_are_errors_naming_the_file() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("store");
        let open_err = || StylusDocs::open(&dir).unwrap_err().to_string();

        StylusDocs::write(&dir, new_store(3)).unwrap();
        let vectors = dir.join(VECTORS_FILE);
        let bytes = std::fs::read(&vectors).unwrap();
        std::fs::write(&vectors, &bytes[..bytes.len() - 4]).unwrap();
        let err = open_err();
        assert!(
            err.contains(VECTORS_FILE) && err.contains("truncated"),
            "{err}"
        );

        StylusDocs::write(&dir, new_store(3)).unwrap();
        let docs = dir.join(DOCS_FILE);
        let mut text = std::fs::read(&docs).unwrap();
        let at = text.iter().position(|&b| b == b'7').unwrap();
        text[at] = b'6';
        std::fs::write(&docs, &text).unwrap();
        let err = open_err();
        assert!(err.contains(DOCS_FILE) && err.contains("crc32"), "{err}");
        // A store written before CRC-32s (sha256 only) is checked against its sha256.
        let path = dir.join(MANIFEST_FILE);
        let mut manifest: Manifest =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        manifest.files.values_mut().for_each(|e| e.crc32 = None);
        write_manifest(&dir, &manifest).unwrap();
        let err = open_err();
        assert!(err.contains(DOCS_FILE) && err.contains("sha256"), "{err}");
        text[at] = b'7';
        std::fs::write(&docs, &text).unwrap();
        assert_eq!(StylusDocs::open(&dir).unwrap().len(), 3);

        StylusDocs::write(&dir, new_store(3)).unwrap();
        std::fs::remove_file(dir.join("extra.bin")).unwrap();
        let err = open_err();
        assert!(
            err.contains("extra.bin") && err.contains("missing"),
            "{err}"
        );

        std::fs::remove_file(dir.join(MANIFEST_FILE)).unwrap();
        let err = open_err();
        assert!(err.contains(MANIFEST_FILE), "{err}");

        // A manifest that lies about the count (checksums fine) is caught by the line count.
        std::fs::remove_dir_all(&dir).unwrap();
        StylusDocs::write(&dir, new_store(3)).unwrap();
        let path = dir.join(MANIFEST_FILE);
        let mut manifest: Manifest =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        manifest.count = 2;
        std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
        let err = open_err();
        assert!(err.contains(DOCS_FILE) && err.contains("says 2"), "{err}");

        manifest.format_version = 99;
        std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
        assert!(open_err().contains("v99"));
    }

    #[test]
    fn bad_inputs_are_refused_before_writing() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("store");
        let mut store = new_store(2);
        store.vectors.pop();
        assert!(StylusDocs::write(&dir, store).is_err());
        let mut store = new_store(2);
        store.docs[1] = doc(0);
        assert!(StylusDocs::write(&dir, store).is_err());
        let mut store = new_store(2);
        store.extra_files[0].name = "../escape".into();
        assert!(StylusDocs::write(&dir, store).is_err());
        assert!(!dir.exists());

        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("precious.txt"), "keep me").unwrap();
        let err = StylusDocs::write(&dir, new_store(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a StylusDocs store"), "{err}");
        assert!(dir.join("precious.txt").exists());
    }

    #[test]
    fn added_files_are_checksummed_and_swapped_in() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("store");
        StylusDocs::write(&dir, new_store(2)).unwrap();
        let side = root.path().join("graph.tmp");
        std::fs::write(&side, b"hnsw graph bytes").unwrap();
        let manifest = StylusDocs::add_files(&dir, &[("index.hnsw.graph", &side)]).unwrap();
        assert_eq!(manifest.files["index.hnsw.graph"].bytes, 16);
        let opened = StylusDocs::open(&dir).unwrap();
        assert_eq!(opened.len(), 2);
        assert_eq!(
            std::fs::read(opened.file_path("index.hnsw.graph").unwrap()).unwrap(),
            b"hnsw graph bytes"
        );
        assert!(opened.file_path("extra.bin").is_some());

        std::fs::write(dir.join("index.hnsw.graph"), b"tampered graph bytes").unwrap();
        let err = StylusDocs::open(&dir).unwrap_err().to_string();
        assert!(err.contains("index.hnsw.graph"), "{err}");

        assert!(StylusDocs::add_files(&dir, &[(DOCS_FILE, &side)]).is_err());
        assert!(StylusDocs::add_files(&dir, &[(MANIFEST_FILE, &side)]).is_err());
        let missing = root.path().join("nope");
        assert!(StylusDocs::add_files(&dir, &[("x", &missing)]).is_err());
    }

    #[test]
    fn reusable_doc_needs_same_card_and_refiner() {
        let root = tempfile::tempdir().unwrap();
        let store = StylusDocs::write(&root.path().join("s"), new_store(2)).unwrap();
        let card = store.docs()[1].card.clone();
        assert_eq!(store.reusable_doc(&card, "card"), Some(1));
        assert_eq!(store.reusable_doc(&card, "vlm:x"), None);
        let mut changed = card.clone();
        changed.tags.push("new".into());
        assert_eq!(store.reusable_doc(&changed, "card"), None);
        let other = AdapterCard::new(AdapterId::Civitai(99), "x", "LORA");
        assert_eq!(store.reusable_doc(&other, "card"), None);
    }
}
