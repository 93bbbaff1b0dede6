//! The adapter cache: a content-addressed store of LoRA files under the stylus cache folder.
//!
//! Layout of the cache directory (default `~/.cache/stylus/adapters`, `STYLUS_ADAPTER_CACHE`):
//! - `blobs/<sha256>.safetensors`: the files, named by the sha256 of their bytes;
//! - `index.json`: one entry per blob (Civitai model and version id, the published file name, whose
//!   stem is the A1111 alias, size, source URL, when it was added and last used);
//! - `tmp/`: downloads in progress (`<key>.part`, resumed with `Range`) and their lock files;
//! - `pins/<sha256>.<pid>.<n>`: a file in use (a render holds it); eviction skips pinned blobs
//!   whose process is alive.
//!
//! Blobs enter only by an atomic rename of a verified temp file, so a crash never leaves a half
//! file under a real name. The index is rewritten atomically (temp + rename) under an exclusive
//! lock (`index.lock`), so several processes can share one cache. A LoRA folder the user already
//! has is never written to: it is a read-only source the locator checks first.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use stylus_core::WeightedAdapter;

use crate::FetchError;

/// Default size limit of the cache: 20 GB (about a hundred SD 1.5 LoRAs at 144 MB).
pub const DEFAULT_MAX_BYTES: u64 = 20_000_000_000;

/// Format version of `index.json`.
const INDEX_VERSION: u32 = 1;

/// One cached file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// Lower-case hex sha256 of the file (its blob name).
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// The file name as published (`detail_tweaker.safetensors`); its stem is the A1111 alias.
    pub file_name: String,
    /// Civitai model id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<u64>,
    /// Civitai model-version id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<u64>,
    /// Where it was downloaded from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Seconds since the Unix epoch.
    pub added: u64,
    /// Seconds since the Unix epoch; eviction removes the least recently used first.
    pub last_used: u64,
}

impl CacheEntry {
    /// The A1111 alias (`<lora:alias:w>`): the file name without its extension.
    pub fn alias(&self) -> &str {
        self.file_name
            .rsplit_once('.')
            .map_or(self.file_name.as_str(), |(stem, _)| stem)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    entries: Vec<CacheEntry>,
}

/// A problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyProblem {
    /// The index lists a blob that is not on disk.
    Missing { sha256: String },
    /// A blob's bytes do not hash to its name (bit rot, an edit).
    Corrupt { sha256: String, actual: String },
    /// The blob's size is not the index's.
    WrongSize {
        sha256: String,
        expected: u64,
        actual: u64,
    },
    /// A blob the index does not list.
    Orphan { path: PathBuf },
}

impl std::fmt::Display for VerifyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing { sha256 } => write!(f, "{sha256}: listed in the index, file missing"),
            Self::Corrupt { sha256, actual } => {
                write!(f, "{sha256}: corrupt, the bytes hash to {actual}")
            }
            Self::WrongSize {
                sha256,
                expected,
                actual,
            } => write!(f, "{sha256}: {actual} bytes, the index says {expected}"),
            Self::Orphan { path } => write!(f, "{}: not in the index", path.display()),
        }
    }
}

/// What `prune` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Entries evicted to get under the limit, least recently used first.
    pub evicted: Vec<CacheEntry>,
    /// Bytes freed (evictions, orphans, stale temp files).
    pub freed: u64,
    /// Pinned entries that were kept although the cache is over its limit.
    pub kept_pinned: usize,
    /// Bytes in the cache afterwards.
    pub total: u64,
}

/// A file in use: while it lives, eviction leaves the blob alone (in this and other processes).
#[derive(Debug)]
pub struct Pin {
    path: PathBuf,
    sha256: String,
}

impl Pin {
    /// The pinned blob's sha256.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

static PIN_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The content-addressed adapter cache.
#[derive(Debug, Clone)]
pub struct AdapterCache {
    root: PathBuf,
    max_bytes: u64,
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether `s` is 64 lower- or upper-case hex digits.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The sha256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut file = File::open(path).map_err(|e| FetchError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(|e| FetchError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

impl AdapterCache {
    /// The default cache folder: `$STYLUS_ADAPTER_CACHE`, else `$XDG_CACHE_HOME/stylus/adapters`,
    /// else `$HOME/.cache/stylus/adapters` (next to the other stylus caches).
    pub fn default_dir() -> Option<PathBuf> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(dir) = var("STYLUS_ADAPTER_CACHE") {
            return Some(PathBuf::from(dir));
        }
        let cache_home = var("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(cache_home.join("stylus").join("adapters"))
    }

    /// The default size limit: `STYLUS_CACHE_MAX_GB` (decimal gigabytes), else
    /// [`DEFAULT_MAX_BYTES`].
    pub fn default_max_bytes() -> Result<u64, FetchError> {
        match std::env::var("STYLUS_CACHE_MAX_GB") {
            Ok(v) if !v.trim().is_empty() => gb_to_bytes(&v)
                .map_err(|e| FetchError::InvalidArgument(format!("STYLUS_CACHE_MAX_GB={v}: {e}"))),
            _ => Ok(DEFAULT_MAX_BYTES),
        }
    }

    /// Opens (and creates) the cache at `root` with a size limit of `max_bytes`.
    pub fn open(root: impl Into<PathBuf>, max_bytes: u64) -> Result<Self, FetchError> {
        let root = root.into();
        for dir in ["blobs", "tmp", "pins"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(|e| FetchError::io(&path, e))?;
        }
        Ok(Self { root, max_bytes })
    }

    /// The cache folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The size limit in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The path of the blob with this sha256 (whether or not it exists).
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root
            .join("blobs")
            .join(format!("{}.safetensors", sha256.to_ascii_lowercase()))
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    /// Runs `f` on the index under the exclusive cross-process lock; writes it back when `f`
    /// returns `true` for "changed".
    fn with_index<T>(
        &self,
        f: impl FnOnce(&mut Vec<CacheEntry>) -> (bool, T),
    ) -> Result<T, FetchError> {
        let lock_path = self.root.join("index.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| FetchError::io(&lock_path, e))?;
        lock.lock().map_err(|e| FetchError::io(&lock_path, e))?;
        let path = self.index_path();
        let mut index = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<IndexFile>(&bytes).map_err(|source| FetchError::Index {
                    path: path.clone(),
                    source,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => IndexFile::default(),
            Err(e) => return Err(FetchError::io(&path, e)),
        };
        let (changed, out) = f(&mut index.entries);
        if changed {
            index.version = INDEX_VERSION;
            let tmp = self
                .root
                .join(format!("index.json.{}.tmp", std::process::id()));
            let bytes = serde_json::to_vec_pretty(&index).map_err(|source| FetchError::Index {
                path: path.clone(),
                source,
            })?;
            std::fs::write(&tmp, bytes).map_err(|e| FetchError::io(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| FetchError::io(&path, e))?;
        }
        drop(lock);
        Ok(out)
    }

    /// Every entry, most recently used first.
    pub fn list(&self) -> Result<Vec<CacheEntry>, FetchError> {
        let mut entries = self.with_index(|entries| (false, entries.clone()))?;
        entries.sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.sha256.cmp(&b.sha256)));
        Ok(entries)
    }

    /// Bytes the index accounts for.
    pub fn total_bytes(&self) -> Result<u64, FetchError> {
        Ok(self.list()?.iter().map(|e| e.size).sum())
    }

    /// The entry with this sha256 whose blob is on disk.
    pub fn get(&self, sha256: &str) -> Result<Option<CacheEntry>, FetchError> {
        let sha = sha256.to_ascii_lowercase();
        let entry =
            self.with_index(|entries| (false, entries.iter().find(|e| e.sha256 == sha).cloned()))?;
        Ok(entry.filter(|_| self.blob_path(&sha).is_file()))
    }

    /// Finds the cached file of a selected adapter: by the catalog's sha256, else by its Civitai
    /// version id (from the download URL), else by model id and file name or alias.
    pub fn find(&self, adapter: &WeightedAdapter) -> Result<Option<CacheEntry>, FetchError> {
        let file = adapter.file.as_ref();
        if let Some(sha) = file
            .and_then(|f| f.sha256.as_deref())
            .filter(|s| is_sha256(s))
        {
            return self.get(sha);
        }
        let version = file
            .and_then(|f| f.download_url.as_deref())
            .and_then(crate::download::civitai_version_id);
        let model = adapter.id.civitai();
        let name = file.map(|f| f.name.to_lowercase());
        let alias = adapter.alias.to_lowercase();
        let found = self.with_index(|entries| {
            let hit = entries.iter().find(|e| {
                (version.is_some() && e.version_id == version)
                    || (model.is_some()
                        && e.model_id == model
                        && (name.as_deref() == Some(e.file_name.to_lowercase().as_str())
                            || e.alias().to_lowercase() == alias))
            });
            (false, hit.cloned())
        })?;
        Ok(found.filter(|e| self.blob_path(&e.sha256).is_file()))
    }

    /// Records a use now (LRU order).
    pub fn touch(&self, sha256: &str) -> Result<(), FetchError> {
        let sha = sha256.to_ascii_lowercase();
        let now = now_secs();
        self.with_index(
            |entries| match entries.iter_mut().find(|e| e.sha256 == sha) {
                Some(entry) => {
                    entry.last_used = now;
                    (true, ())
                }
                None => (false, ()),
            },
        )
    }

    /// Moves a verified file into the cache under its sha256 (atomic rename) and records it; the
    /// blob is pinned before the limit is enforced, so the new file itself is never evicted.
    /// Returns the blob path and its pin.
    pub fn insert(
        &self,
        verified: &Path,
        mut entry: CacheEntry,
    ) -> Result<(PathBuf, Pin), FetchError> {
        entry.sha256 = entry.sha256.to_ascii_lowercase();
        let blob = self.blob_path(&entry.sha256);
        let pin = self.pin(&entry.sha256)?;
        if blob.is_file() {
            // Another process (or an earlier run) has it already: the same bytes by definition.
            let _ = std::fs::remove_file(verified);
        } else {
            std::fs::rename(verified, &blob).map_err(|e| FetchError::io(&blob, e))?;
        }
        let now = now_secs();
        self.with_index(|entries| {
            match entries.iter_mut().find(|e| e.sha256 == entry.sha256) {
                Some(existing) => {
                    existing.last_used = now;
                    existing.model_id = existing.model_id.or(entry.model_id);
                    existing.version_id = existing.version_id.or(entry.version_id);
                    if existing.url.is_none() {
                        existing.url = entry.url.take();
                    }
                }
                None => {
                    entry.added = now;
                    entry.last_used = now;
                    entries.push(entry);
                }
            }
            (true, ())
        })?;
        self.enforce_limit()?;
        Ok((blob, pin))
    }

    /// Pins a blob: while the returned guard lives, eviction keeps it.
    pub fn pin(&self, sha256: &str) -> Result<Pin, FetchError> {
        let sha = sha256.to_ascii_lowercase();
        let n = PIN_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = self
            .root
            .join("pins")
            .join(format!("{sha}.{}.{n}", std::process::id()));
        std::fs::write(&path, b"").map_err(|e| FetchError::io(&path, e))?;
        Ok(Pin { path, sha256: sha })
    }

    /// The sha256 of every blob pinned by a live process (stale pin files are removed).
    fn pinned(&self) -> Result<Vec<String>, FetchError> {
        let dir = self.root.join("pins");
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&dir).map_err(|e| FetchError::io(&dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let mut parts = name.split('.');
            let (Some(sha), Some(pid)) = (parts.next(), parts.next()) else {
                continue;
            };
            let alive = pid.parse::<u32>().map_or(true, process_alive);
            if alive {
                out.push(sha.to_string());
            } else {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(out)
    }

    /// Evicts least-recently-used, unpinned blobs until the cache fits its limit.
    pub fn enforce_limit(&self) -> Result<PruneReport, FetchError> {
        self.evict_to(self.max_bytes)
    }

    /// Evicts least-recently-used, unpinned blobs until at most `max_bytes` remain.
    pub fn evict_to(&self, max_bytes: u64) -> Result<PruneReport, FetchError> {
        let pinned = self.pinned()?;
        let mut report = PruneReport::default();
        let evicted = self.with_index(|entries| {
            let mut total: u64 = entries.iter().map(|e| e.size).sum();
            if total <= max_bytes {
                return (false, (Vec::new(), total, 0));
            }
            let mut order: Vec<usize> = (0..entries.len()).collect();
            order.sort_by_key(|&i| (entries[i].last_used, entries[i].added));
            let mut remove = Vec::new();
            let mut kept_pinned = 0;
            for i in order {
                if total <= max_bytes {
                    break;
                }
                if pinned.contains(&entries[i].sha256) {
                    kept_pinned += 1;
                    continue;
                }
                total -= entries[i].size;
                remove.push(i);
            }
            remove.sort_unstable();
            let mut out = Vec::new();
            for i in remove.into_iter().rev() {
                out.push(entries.remove(i));
            }
            (!out.is_empty(), (out, total, kept_pinned))
        })?;
        let (entries, total, kept_pinned) = evicted;
        for entry in &entries {
            let blob = self.blob_path(&entry.sha256);
            match std::fs::remove_file(&blob) {
                Ok(()) => report.freed += entry.size,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(FetchError::io(&blob, e)),
            }
            tracing::info!(sha256 = %entry.sha256, file = %entry.file_name, "evicted from the adapter cache");
        }
        if kept_pinned > 0 && total > max_bytes {
            tracing::warn!(
                total,
                max_bytes,
                kept_pinned,
                "adapter cache over its limit: the rest is in use"
            );
        }
        report.evicted = entries;
        report.kept_pinned = kept_pinned;
        report.total = total;
        Ok(report)
    }

    /// `stylus cache prune`: drops index entries whose blob is gone, removes orphan blobs and
    /// temp files older than a day (no download of ours is that slow), then evicts to
    /// `max_bytes` (the cache's limit when `None`).
    pub fn prune(&self, max_bytes: Option<u64>) -> Result<PruneReport, FetchError> {
        let mut freed = 0;
        let listed: Vec<String> = self.with_index(|entries| {
            let before = entries.len();
            entries.retain(|e| self.blob_path(&e.sha256).is_file());
            (
                entries.len() != before,
                entries.iter().map(|e| e.sha256.clone()).collect(),
            )
        })?;
        for path in self.blob_files()? {
            let sha = blob_sha(&path);
            if !sha.is_some_and(|s| listed.contains(&s)) {
                freed += std::fs::metadata(&path).map_or(0, |m| m.len());
                std::fs::remove_file(&path).map_err(|e| FetchError::io(&path, e))?;
            }
        }
        let tmp = self.tmp_dir();
        let day = std::time::Duration::from_secs(24 * 3600);
        for entry in std::fs::read_dir(&tmp)
            .map_err(|e| FetchError::io(&tmp, e))?
            .flatten()
        {
            let Ok(meta) = entry.metadata() else { continue };
            let old = meta
                .modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > day);
            if old {
                freed += meta.len();
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let mut report = self.evict_to(max_bytes.unwrap_or(self.max_bytes))?;
        report.freed += freed;
        Ok(report)
    }

    fn blob_files(&self) -> Result<Vec<PathBuf>, FetchError> {
        let dir = self.root.join("blobs");
        let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| FetchError::io(&dir, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        out.sort();
        Ok(out)
    }

    /// `stylus cache verify`: re-hashes every blob and checks it against its name and the index.
    pub fn verify(&self) -> Result<Vec<VerifyProblem>, FetchError> {
        let entries = self.list()?;
        let mut problems = Vec::new();
        for entry in &entries {
            let blob = self.blob_path(&entry.sha256);
            let Ok(meta) = std::fs::metadata(&blob) else {
                problems.push(VerifyProblem::Missing {
                    sha256: entry.sha256.clone(),
                });
                continue;
            };
            if meta.len() != entry.size {
                problems.push(VerifyProblem::WrongSize {
                    sha256: entry.sha256.clone(),
                    expected: entry.size,
                    actual: meta.len(),
                });
            }
            let actual = sha256_file(&blob)?;
            if actual != entry.sha256 {
                problems.push(VerifyProblem::Corrupt {
                    sha256: entry.sha256.clone(),
                    actual,
                });
            }
        }
        for path in self.blob_files()? {
            let listed = blob_sha(&path).is_some_and(|s| entries.iter().any(|e| e.sha256 == s));
            if !listed {
                problems.push(VerifyProblem::Orphan { path });
            }
        }
        Ok(problems)
    }

    /// Removes one entry and its blob (used when `verify` finds it corrupt).
    pub fn remove(&self, sha256: &str) -> Result<bool, FetchError> {
        let sha = sha256.to_ascii_lowercase();
        let removed = self.with_index(|entries| {
            let before = entries.len();
            entries.retain(|e| e.sha256 != sha);
            (entries.len() != before, entries.len() != before)
        })?;
        let blob = self.blob_path(&sha);
        match std::fs::remove_file(&blob) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(removed),
            Err(e) => Err(FetchError::io(&blob, e)),
        }
    }

    /// Entries by sha256 (for callers that want a map).
    pub fn entries_by_sha(&self) -> Result<BTreeMap<String, CacheEntry>, FetchError> {
        Ok(self
            .list()?
            .into_iter()
            .map(|e| (e.sha256.clone(), e))
            .collect())
    }
}

/// The sha256 a blob path names.
fn blob_sha(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let sha = name.strip_suffix(".safetensors")?;
    is_sha256(sha).then(|| sha.to_string())
}

/// Whether process `pid` runs (Linux: `/proc/<pid>`; elsewhere every pin counts as live).
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc_root = Path::new("/proc");
    if proc_root.join("self").exists() {
        proc_root.join(pid.to_string()).exists()
    } else {
        true
    }
}

/// `12.5` (decimal gigabytes) to bytes; must be positive and finite.
pub fn gb_to_bytes(text: &str) -> Result<u64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok((v * 1e9) as u64),
        _ => Err(format!("`{text}` is not a positive number of gigabytes")),
    }
}
