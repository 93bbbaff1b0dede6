//! [`FolderLocator`]: finds a selected adapter's file in a local folder of LoRAs.
//!
//! Lookup order: a file whose name equals the catalog file name or whose stem equals the alias
//! (case-insensitive), checked against the catalog sha256 when one is known (a same-named file
//! with another hash is another version: not a match); then, when the catalog gives a sha256 or
//! the id is a local `sha256:` id, any file with that whole-file sha256 or `sshs_model_hash`.
//! Hashing reads whole files, so hashes are computed once per file and cached.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use stylus_core::{AdapterId, AdapterLocator, LocatedFile, Result, WeightedAdapter};

use crate::civitai::file_stem;
use crate::lora_folder::{FileHashes, hash_safetensors, read_header, safetensors_files_in};

/// Locates adapter files in one folder (searched recursively).
#[derive(Debug)]
pub struct FolderLocator {
    dir: PathBuf,
    files: Vec<PathBuf>,
    hashes: Mutex<HashMap<PathBuf, FileHashes>>,
}

impl FolderLocator {
    /// Lists the `*.safetensors` files under `dir` (once; make a new locator to rescan).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        let files = safetensors_files_in(&dir)?;
        Ok(Self {
            dir,
            files,
            hashes: Mutex::new(HashMap::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The hashes of one file, computed on first use.
    fn hashes(&self, path: &Path) -> Result<FileHashes> {
        if let Some(hashes) = self.lock().get(path) {
            return Ok(hashes.clone());
        }
        let header = read_header(path)?;
        let hashes = hash_safetensors(path, header.header_len)?;
        self.lock().insert(path.to_path_buf(), hashes.clone());
        Ok(hashes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, FileHashes>> {
        // A panic while holding the lock cannot leave the cache inconsistent (one insert).
        self.hashes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn matches_hash(&self, path: &Path, wanted: &Wanted) -> Result<bool> {
        if wanted.file_sha256.is_none() && wanted.sshs.is_none() {
            return Ok(true);
        }
        let hashes = match self.hashes(path) {
            Ok(hashes) => hashes,
            Err(err) => {
                tracing::warn!(error = %err, "unreadable LoRA file while locating an adapter");
                return Ok(false);
            }
        };
        Ok(
            wanted.file_sha256.as_deref() == Some(hashes.file_sha256.as_str())
                || wanted.sshs.as_deref() == Some(hashes.sshs_model_hash.as_str()),
        )
    }
}

/// What identifies the wanted file.
struct Wanted {
    file_sha256: Option<String>,
    sshs: Option<String>,
}

#[async_trait::async_trait]
impl AdapterLocator for FolderLocator {
    /// Hashing reads files: the lookup runs as CPU work off the runtime's other tasks
    /// ([`stylus_core::blocking::run_cpu`]).
    async fn locate(&self, adapter: &WeightedAdapter) -> Result<Option<LocatedFile>> {
        stylus_core::blocking::run_cpu(|| self.locate_blocking(adapter))
    }
}

impl FolderLocator {
    /// [`AdapterLocator::locate`] on this thread, with the tensor hash when it was computed
    /// (a match by hash, or a cached one).
    pub fn locate_blocking(&self, adapter: &WeightedAdapter) -> Result<Option<LocatedFile>> {
        Ok(self.find(adapter)?.map(|path| LocatedFile {
            tensor_sha256: self.lock().get(&path).map(|h| h.sshs_model_hash.clone()),
            path,
        }))
    }

    fn find(&self, adapter: &WeightedAdapter) -> Result<Option<PathBuf>> {
        let wanted = Wanted {
            file_sha256: adapter
                .file
                .as_ref()
                .and_then(|f| f.sha256.as_ref())
                .map(|h| h.to_ascii_lowercase()),
            sshs: match &adapter.id {
                AdapterId::Sha256(hex) => Some(hex.clone()),
                _ => None,
            },
        };
        let file_name = adapter.file.as_ref().map(|f| f.name.to_lowercase());
        let alias = adapter.alias.to_lowercase();
        for path in &self.files {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            let stem = file_stem(&name).unwrap_or_default();
            let named = file_name.as_deref() == Some(name.as_str()) || stem == alias;
            if named && self.matches_hash(path, &wanted)? {
                return Ok(Some(path.clone()));
            }
        }
        if wanted.file_sha256.is_none() && wanted.sshs.is_none() {
            return Ok(None);
        }
        for path in &self.files {
            if self.matches_hash(path, &wanted)? {
                return Ok(Some(path.clone()));
            }
        }
        Ok(None)
    }
}
