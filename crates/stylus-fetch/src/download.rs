//! The downloader: Civitai `downloadUrl`s into the adapter cache, verified before they enter it.
//!
//! One file: look in the cache (by sha256); else take the per-file lock (`tmp/<key>.lock`, so two
//! processes asking for the same file download it once), GET it into `tmp/<key>.part` with the
//! API key (`CIVITAI_API_KEY` as a bearer header, or Civitai's `token` query parameter, sent only
//! to Civitai hosts), following redirects. A broken or stalled transfer is resumed with `Range`
//! from what the part file holds; 429, 408, 5xx, timeouts and broken connections are retried with
//! exponential backoff (`Retry-After` honoured, capped) within the retry count and the per-file
//! deadline. Then the checks, before anything is renamed into the cache: the size cap, HTML and
//! JSON bodies served with 200, pickles, safetensors validity, the sha256 of the catalog (a
//! mismatch deletes the part file and names both hashes), and the base model (the merger's own
//! check, `stylus_diffusion::lora::guess_base_model`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::StatusCode;
use reqwest::header::{
    AUTHORIZATION, CONTENT_DISPOSITION, CONTENT_RANGE, CONTENT_TYPE, HeaderMap, RANGE, RETRY_AFTER,
};
use stylus_core::blocking::run_cpu;
use stylus_core::{NetworkConfig, WeightedAdapter};
use tokio::io::AsyncWriteExt;

use crate::FetchError;
use crate::cache::{AdapterCache, CacheEntry, Pin, is_sha256};

/// Default size cap of one adapter file: 2 GB (SD 1.5 LoRAs are 10-300 MB; full fine-tunes are
/// not adapters).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 2_000_000_000;

/// How the Civitai API key travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthStyle {
    /// `Authorization: Bearer <key>` (Civitai's documented header).
    #[default]
    Bearer,
    /// `?token=<key>` (Civitai's alternative, for clients that lose headers on redirects).
    Query,
}

/// Settings of the downloader.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Limit of one request until its headers, and of a pause between two body chunks.
    pub timeout: Duration,
    /// Retries after the first attempt of one file (transient failures only).
    pub retries: u32,
    /// Limit of one file over all its attempts and waits.
    pub deadline: Duration,
    /// Wait before the first retry; doubled each retry up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// A server's `Retry-After` is honoured up to this long.
    pub max_retry_after: Duration,
    /// Files downloaded at once.
    pub concurrency: usize,
    /// Size cap of one file in bytes.
    pub max_file_bytes: u64,
    /// `CIVITAI_API_KEY`.
    pub api_key: Option<String>,
    pub auth_style: AuthStyle,
    /// Hosts (and their subdomains) that get the API key; nobody else sees it.
    pub api_key_hosts: Vec<String>,
    /// No network: only what is cached.
    pub offline: bool,
    /// Progress bars on stderr (per file and overall).
    pub progress: bool,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            retries: 5,
            deadline: Duration::from_secs(3600),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
            concurrency: 3,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            api_key: None,
            auth_style: AuthStyle::Bearer,
            api_key_hosts: vec!["civitai.com".into()],
            offline: false,
            progress: false,
        }
    }
}

impl FetchConfig {
    /// The defaults with `network`'s timeout, retries and deadline, and the environment:
    /// `CIVITAI_API_KEY`, `STYLUS_CIVITAI_TOKEN_QUERY=1` (the `token` query parameter instead of
    /// the header), `STYLUS_OFFLINE=1`, `STYLUS_FETCH_MAX_FILE_MB`.
    pub fn from_env(network: &NetworkConfig) -> Result<Self, FetchError> {
        Self::from_vars(network, |name| std::env::var(name).ok())
    }

    /// [`Self::from_env`] reading variables through `var`.
    pub fn from_vars(
        network: &NetworkConfig,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, FetchError> {
        let mut config = Self::default();
        if let Some(t) = network.timeout_secs {
            config.timeout = Duration::from_secs_f64(t);
        }
        if let Some(r) = network.retries {
            config.retries = r;
        }
        if let Some(d) = network.deadline_secs {
            config.deadline = Duration::from_secs_f64(d);
        }
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        config.api_key = set("CIVITAI_API_KEY").map(|k| k.trim().to_string());
        let truthy = |v: String| matches!(v.trim(), "1" | "true" | "yes" | "on");
        if set("STYLUS_CIVITAI_TOKEN_QUERY").is_some_and(truthy) {
            config.auth_style = AuthStyle::Query;
        }
        config.offline = set("STYLUS_OFFLINE").is_some_and(truthy);
        if let Some(mb) = set("STYLUS_FETCH_MAX_FILE_MB") {
            config.max_file_bytes = match mb.trim().parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 => (v * 1e6) as u64,
                _ => {
                    return Err(FetchError::InvalidArgument(format!(
                        "STYLUS_FETCH_MAX_FILE_MB={mb}: expected a positive number of megabytes"
                    )));
                }
            };
        }
        Ok(config)
    }
}

/// One file to fetch.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchRequest {
    /// Names the adapter in messages: `id "title" (file name)`.
    pub label: String,
    pub url: String,
    /// The catalog's sha256 (checked before the file enters the cache); `None` when unknown.
    pub sha256: Option<String>,
    /// The published file name (its stem is the A1111 alias); from `Content-Disposition` or the
    /// URL when `None`.
    pub file_name: Option<String>,
    pub model_id: Option<u64>,
    pub version_id: Option<u64>,
}

impl FetchRequest {
    /// A request for a URL alone (no hash to check, the name from the server).
    pub fn url(url: impl Into<String>) -> Self {
        let url = url.into();
        Self {
            label: url.clone(),
            version_id: civitai_version_id(&url),
            url,
            sha256: None,
            file_name: None,
            model_id: None,
        }
    }

    /// A request for a selected adapter (its card's `downloadUrl`, sha256 and file name).
    pub fn from_adapter(adapter: &WeightedAdapter) -> Result<Self, FetchError> {
        let file = adapter.file.as_ref();
        let label = adapter_label(adapter);
        let url = file
            .and_then(|f| f.download_url.clone())
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| FetchError::NoDownloadUrl {
                adapter: label.clone(),
            })?;
        Ok(Self {
            label,
            version_id: civitai_version_id(&url),
            sha256: file
                .and_then(|f| f.sha256.clone())
                .filter(|s| is_sha256(s))
                .map(|s| s.to_ascii_lowercase()),
            file_name: file.map(|f| f.name.clone()),
            model_id: adapter.id.civitai(),
            url,
        })
    }
}

/// `id "title" (file name)`.
pub fn adapter_label(adapter: &WeightedAdapter) -> String {
    let name = adapter
        .file
        .as_ref()
        .map_or(adapter.alias.as_str(), |f| f.name.as_str());
    format!("{} \"{}\" ({name})", adapter.id, adapter.title)
}

/// The model-version id of a Civitai download URL (`.../api/download/models/<id>`).
pub fn civitai_version_id(url: &str) -> Option<u64> {
    let path = url.split(['?', '#']).next()?;
    let rest = path.split("/api/download/models/").nth(1)?;
    rest.trim_end_matches('/').parse().ok()
}

/// A file in the cache, pinned while the value lives.
#[derive(Debug)]
pub struct Fetched {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    /// Whether it was downloaded now (`false`: it was cached).
    pub downloaded: bool,
    pub pin: Pin,
}

/// Downloads into an [`AdapterCache`].
#[derive(Debug, Clone)]
pub struct Fetcher {
    cache: AdapterCache,
    config: FetchConfig,
    client: reqwest::Client,
    progress: Option<MultiProgress>,
}

/// One attempt's outcome when it failed.
enum Failure {
    /// Worth another attempt, after `wait` when the server said so.
    Retry(FetchError, Option<Duration>),
    Fatal(FetchError),
}

impl Fetcher {
    pub fn new(cache: AdapterCache, config: FetchConfig) -> Result<Self, FetchError> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::limited(10))
            .user_agent(concat!("stylus/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::InvalidArgument(format!("HTTP client: {e}")))?;
        let progress = config
            .progress
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4)));
        Ok(Self {
            cache,
            config,
            client,
            progress,
        })
    }

    pub fn cache(&self) -> &AdapterCache {
        &self.cache
    }

    pub fn config(&self) -> &FetchConfig {
        &self.config
    }

    /// Fetches every request, at most `concurrency` at once; one result per request, in order.
    pub async fn fetch_all(&self, requests: &[FetchRequest]) -> Vec<Result<Fetched, FetchError>> {
        let limit = Arc::new(tokio::sync::Semaphore::new(self.config.concurrency.max(1)));
        let overall = self.progress.as_ref().map(|multi| {
            let bar = multi.add(ProgressBar::new(requests.len() as u64));
            bar.set_style(
                ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} files")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix("adapters");
            bar
        });
        let jobs = requests.iter().map(|request| {
            let limit = Arc::clone(&limit);
            let overall = overall.clone();
            async move {
                let _permit = limit.acquire().await;
                let result = self.fetch(request).await;
                if let Some(bar) = &overall {
                    bar.inc(1);
                }
                result
            }
        });
        let results = futures_util::future::join_all(jobs).await;
        if let Some(bar) = overall {
            bar.finish_and_clear();
        }
        results
    }

    /// Fetches one file: from the cache when it is there, else from the network.
    pub async fn fetch(&self, request: &FetchRequest) -> Result<Fetched, FetchError> {
        // The cache's index and pins are small files: read in place, off the runtime's workers.
        if let Some(found) = run_cpu(|| self.cached(request))? {
            return Ok(found);
        }
        if self.config.offline {
            return Err(FetchError::Offline {
                adapter: request.label.clone(),
                url: request.url.clone(),
            });
        }
        let key = match &request.sha256 {
            Some(sha) => sha.clone(),
            None => hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                request.url.as_bytes(),
            )),
        };
        let tmp = self.cache.tmp_dir();
        let lock_path = tmp.join(format!("{key}.lock"));
        let lock = self.lock(&lock_path).await?;
        // Another process may have finished it while we waited.
        if let Some(found) = run_cpu(|| self.cached(request))? {
            return Ok(found);
        }
        let part = tmp.join(format!("{key}.part"));
        let result = self.download(request, &part).await;
        drop(lock);
        result
    }

    /// The cached file of `request`, pinned and touched.
    fn cached(&self, request: &FetchRequest) -> Result<Option<Fetched>, FetchError> {
        let entry = match &request.sha256 {
            Some(sha) => self.cache.get(sha)?,
            None => match request.version_id {
                Some(version) => self
                    .cache
                    .list()?
                    .into_iter()
                    .find(|e| e.version_id == Some(version))
                    .filter(|e| self.cache.blob_path(&e.sha256).is_file()),
                None => None,
            },
        };
        let Some(entry) = entry else { return Ok(None) };
        let pin = self.cache.pin(&entry.sha256)?;
        self.cache.touch(&entry.sha256)?;
        Ok(Some(Fetched {
            path: self.cache.blob_path(&entry.sha256),
            sha256: entry.sha256,
            size: entry.size,
            downloaded: false,
            pin,
        }))
    }

    /// Takes the exclusive lock of one download (polling, so the runtime's workers stay free).
    async fn lock(&self, path: &Path) -> Result<std::fs::File, FetchError> {
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| FetchError::io(path, e))?;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(std::fs::TryLockError::WouldBlock) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(FetchError::io(path, e)),
            }
        }
    }

    /// Downloads into `part` (resuming what it holds), checks it and moves it into the cache.
    async fn download(&self, request: &FetchRequest, part: &Path) -> Result<Fetched, FetchError> {
        let started = Instant::now();
        let bar = self.progress.as_ref().map(|multi| {
            let bar = multi.add(ProgressBar::new(0));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix("download");
            bar.set_message(
                request
                    .file_name
                    .clone()
                    .unwrap_or_else(|| request.label.clone()),
            );
            bar
        });
        let mut attempt = 0u32;
        let mut backoff = self.config.initial_backoff;
        let mut served_name = None;
        loop {
            match self
                .attempt(request, part, bar.as_ref(), &mut served_name)
                .await
            {
                Ok(()) => break,
                Err(Failure::Fatal(error)) => {
                    let _ = std::fs::remove_file(part);
                    if let Some(bar) = &bar {
                        bar.abandon();
                    }
                    return Err(error);
                }
                Err(Failure::Retry(error, asked)) => {
                    attempt += 1;
                    if attempt > self.config.retries {
                        return Err(FetchError::RetriesExhausted {
                            adapter: request.label.clone(),
                            attempts: attempt,
                            source: Box::new(error),
                        });
                    }
                    let wait = asked
                        .map(|w| w.min(self.config.max_retry_after))
                        .unwrap_or(backoff);
                    backoff = (backoff * 2).min(self.config.max_backoff);
                    if started.elapsed() + wait >= self.config.deadline {
                        return Err(FetchError::Deadline {
                            adapter: request.label.clone(),
                            secs: self.config.deadline.as_secs_f64(),
                            source: Box::new(error),
                        });
                    }
                    tracing::warn!(
                        adapter = %request.label,
                        error = %crate::error::chain(&error),
                        attempt,
                        wait_ms = wait.as_millis() as u64,
                        "download failed, retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        let file_name = request
            .file_name
            .clone()
            .or(served_name)
            .or_else(|| url_file_name(&request.url))
            .unwrap_or_else(|| "adapter.safetensors".into());
        let checked = self.check(request, part, &file_name).await;
        let (sha256, size) = match checked {
            Ok(found) => found,
            Err(error) => {
                let _ = std::fs::remove_file(part);
                return Err(error);
            }
        };
        let entry = CacheEntry {
            sha256: sha256.clone(),
            size,
            file_name,
            model_id: request.model_id,
            version_id: request.version_id,
            url: Some(request.url.clone()),
            added: 0,
            last_used: 0,
        };
        let (path, pin) = self.cache.insert(part, entry)?;
        tracing::info!(adapter = %request.label, %sha256, size, "downloaded into the adapter cache");
        Ok(Fetched {
            path,
            sha256,
            size,
            downloaded: true,
            pin,
        })
    }

    /// The URL with the API key as `token` when the style and host say so.
    fn request_url(&self, url: &str) -> String {
        match (&self.config.api_key, self.config.auth_style) {
            (Some(key), AuthStyle::Query) if self.key_host(url) => {
                let separator = if url.contains('?') { '&' } else { '?' };
                format!("{url}{separator}token={key}")
            }
            _ => url.to_string(),
        }
    }

    /// Whether `url`'s host may see the API key.
    fn key_host(&self, url: &str) -> bool {
        let Ok(parsed) = reqwest::Url::parse(url) else {
            return false;
        };
        let Some(host) = parsed.host_str() else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        self.config.api_key_hosts.iter().any(|allowed| {
            let allowed = allowed.to_ascii_lowercase();
            host == allowed || host.ends_with(&format!(".{allowed}"))
        })
    }

    /// One GET into `part`, from its current length.
    async fn attempt(
        &self,
        request: &FetchRequest,
        part: &Path,
        bar: Option<&ProgressBar>,
        served_name: &mut Option<String>,
    ) -> Result<(), Failure> {
        let label = || request.label.clone();
        let url = request.url.clone();
        let have = std::fs::metadata(part).map_or(0, |m| m.len());
        let mut builder = self.client.get(self.request_url(&request.url));
        if let (Some(key), AuthStyle::Bearer) = (&self.config.api_key, self.config.auth_style)
            && self.key_host(&request.url)
        {
            builder = builder.header(AUTHORIZATION, format!("Bearer {key}"));
        }
        if have > 0 {
            builder = builder.header(RANGE, format!("bytes={have}-"));
        }
        let timeout = self.config.timeout;
        let timed_out = || FetchError::Timeout {
            adapter: label(),
            url: url.clone(),
            secs: timeout.as_secs_f64(),
        };
        let mut response = match tokio::time::timeout(timeout, builder.send()).await {
            Err(_) => return Err(Failure::Retry(timed_out(), None)),
            Ok(Err(source)) => {
                let error = FetchError::Network {
                    adapter: label(),
                    url: url.clone(),
                    source,
                };
                return Err(Failure::Retry(error, None));
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        let headers = response.headers().clone();
        if status == StatusCode::RANGE_NOT_SATISFIABLE && have > 0 {
            // The part file is not a prefix the server knows: start over.
            let _ = std::fs::remove_file(part);
            let error = FetchError::Http {
                adapter: label(),
                url,
                status: status.as_u16(),
                body: String::new(),
            };
            return Err(Failure::Retry(error, Some(Duration::ZERO)));
        }
        if !status.is_success() {
            let body = body_snippet(response).await;
            let error = FetchError::Http {
                adapter: label(),
                url,
                status: status.as_u16(),
                body,
            };
            return Err(if error.is_transient() {
                Failure::Retry(error, retry_after(&headers))
            } else {
                Failure::Fatal(error)
            });
        }
        if let Some(name) = disposition_file_name(&headers) {
            *served_name = Some(name);
        }
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if content_type.starts_with("text/html") {
            let snippet = body_snippet(response).await;
            return Err(Failure::Fatal(FetchError::HtmlBody {
                adapter: label(),
                url,
                snippet,
            }));
        }
        if content_type.starts_with("application/json") || content_type.starts_with("text/json") {
            let text = body_snippet(response).await;
            return Err(Failure::Fatal(FetchError::JsonBody {
                adapter: label(),
                url,
                message: json_message(&text),
            }));
        }
        // Where this body starts in the file: 0 on a 200, `have` on a matching 206.
        let resumed = status == StatusCode::PARTIAL_CONTENT && have > 0;
        if resumed && content_range_start(&headers) != Some(have) {
            let _ = std::fs::remove_file(part);
            let error = FetchError::Http {
                adapter: label(),
                url,
                status: status.as_u16(),
                body: "Content-Range does not continue the partial file".into(),
            };
            return Err(Failure::Retry(error, Some(Duration::ZERO)));
        }
        let start = if resumed { have } else { 0 };
        let expected_total = response.content_length().map(|len| start + len);
        let cap = self.config.max_file_bytes;
        if let Some(total) = expected_total
            && total > cap
        {
            return Err(Failure::Fatal(FetchError::TooLarge {
                adapter: label(),
                size: total,
                cap,
            }));
        }
        let mut file = if resumed {
            tokio::fs::OpenOptions::new().append(true).open(part).await
        } else {
            tokio::fs::File::create(part).await
        }
        .map_err(|e| Failure::Fatal(FetchError::io(part, e)))?;
        if let Some(bar) = bar {
            bar.set_length(expected_total.unwrap_or(0));
            bar.set_position(start);
        }
        let mut written = start;
        loop {
            let chunk = match tokio::time::timeout(timeout, response.chunk()).await {
                Err(_) => {
                    flush(&mut file, part).await?;
                    return Err(Failure::Retry(timed_out(), None));
                }
                Ok(Err(source)) => {
                    flush(&mut file, part).await?;
                    let error = FetchError::Network {
                        adapter: label(),
                        url: url.clone(),
                        source,
                    };
                    return Err(Failure::Retry(error, None));
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => chunk,
            };
            if written == 0 && chunk.len() >= 16 {
                // Refuse an error page or a pickle at its first bytes, before downloading it all.
                let name = request.file_name.as_deref().unwrap_or(&request.url);
                if let Some(error) = sniff(&chunk, &label(), &url, name) {
                    return Err(Failure::Fatal(error));
                }
            }
            written += chunk.len() as u64;
            if written > cap {
                return Err(Failure::Fatal(FetchError::TooLarge {
                    adapter: label(),
                    size: written,
                    cap,
                }));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| Failure::Fatal(FetchError::io(part, e)))?;
            if let Some(bar) = bar {
                bar.set_position(written);
            }
        }
        flush(&mut file, part).await?;
        if let Some(total) = expected_total
            && written < total
        {
            let error = FetchError::Truncated {
                adapter: label(),
                url,
                got: written,
                expected: total,
            };
            return Err(Failure::Retry(error, None));
        }
        Ok(())
    }

    /// The checks of a complete download: content kind, safetensors validity, sha256, base
    /// model. Returns the sha256 and the size.
    async fn check(
        &self,
        request: &FetchRequest,
        part: &Path,
        file_name: &str,
    ) -> Result<(String, u64), FetchError> {
        let label = request.label.clone();
        let url = request.url.clone();
        let part = part.to_path_buf();
        let expected = request.sha256.clone();
        let file_name = file_name.to_string();
        let cap = self.config.max_file_bytes;
        let checked = tokio::task::spawn_blocking(move || {
            let size = std::fs::metadata(&part)
                .map_err(|e| FetchError::io(&part, e))?
                .len();
            if size > cap {
                return Err(FetchError::TooLarge {
                    adapter: label,
                    size,
                    cap,
                });
            }
            // Read once (the size cap bounds it): hashed, sniffed and parsed from memory.
            let bytes = std::fs::read(&part).map_err(|e| FetchError::io(&part, e))?;
            let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            if let Some(expected) = expected
                && expected != actual
            {
                return Err(FetchError::HashMismatch {
                    adapter: label,
                    expected,
                    actual,
                });
            }
            if let Some(error) = sniff(&bytes, &label, &url, &file_name) {
                return Err(error);
            }
            check_lora(&label, &file_name, bytes)?;
            Ok((actual, size))
        })
        .await;
        match checked {
            Ok(result) => result,
            Err(join) => Err(FetchError::InvalidArgument(format!(
                "adapter {}: the check task failed: {join}",
                request.label
            ))),
        }
    }
}

/// Validates safetensors bytes and refuses LoRAs made for another base model, with the merger's
/// own rule (`stylus_diffusion::lora::guess_base_model`).
pub fn check_lora(label: &str, file_name: &str, bytes: Vec<u8>) -> Result<(), FetchError> {
    use stylus_diffusion::lora::{TensorFile, guess_base_model};
    let file = TensorFile::from_bytes(Path::new(file_name), bytes).map_err(|source| {
        FetchError::NotSafetensors {
            adapter: label.to_string(),
            source,
        }
    })?;
    let guess = guess_base_model(&file);
    match guess.family {
        "sd1" | "unknown" => Ok(()),
        found => Err(FetchError::BaseModelMismatch {
            adapter: label.to_string(),
            found: found.to_string(),
            evidence: guess.evidence,
        }),
    }
}

async fn flush(file: &mut tokio::fs::File, part: &Path) -> Result<(), Failure> {
    file.flush()
        .await
        .map_err(|e| Failure::Fatal(FetchError::io(part, e)))
}

/// What the first bytes of a download say when they are not safetensors: an HTML page, a JSON
/// body, a pickle (by content, or by a pickle extension without a safetensors header).
fn sniff(start: &[u8], label: &str, url: &str, name: &str) -> Option<FetchError> {
    let text_start = start
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map_or(&start[..0], |i| &start[i..]);
    let head = String::from_utf8_lossy(&text_start[..text_start.len().min(512)]).into_owned();
    let lower = head.to_ascii_lowercase();
    if lower.starts_with("<!doctype html")
        || lower.starts_with("<html")
        || lower.starts_with("<?xml")
    {
        return Some(FetchError::HtmlBody {
            adapter: label.to_string(),
            url: url.to_string(),
            snippet: head.chars().take(200).collect(),
        });
    }
    if lower.starts_with('{') && !looks_like_safetensors(start) {
        return Some(FetchError::JsonBody {
            adapter: label.to_string(),
            url: url.to_string(),
            message: json_message(&String::from_utf8_lossy(start)),
        });
    }
    let pickle = if start.starts_with(b"PK\x03\x04") {
        Some("a zip archive (a PyTorch .pt/.ckpt pickle)")
    } else if start.len() >= 2 && start[0] == 0x80 && (2..=5).contains(&start[1]) {
        Some("a Python pickle")
    } else {
        None
    };
    let extension = name
        .split(['?', '#'])
        .next()
        .and_then(|n| n.rsplit_once('.'))
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    let pickle_name = ["ckpt", "pt", "pth", "bin", "pkl"].contains(&extension.as_str());
    let what = match pickle {
        Some(what) => what,
        None if pickle_name && start.len() >= 9 && !looks_like_safetensors(start) => {
            "a Python pickle (by its extension, and it is not safetensors)"
        }
        None => return None,
    };
    Some(FetchError::Pickle {
        adapter: label.to_string(),
        file_name: name.to_string(),
        what,
    })
}

/// An 8-byte little-endian header length within reason followed by `{`.
fn looks_like_safetensors(start: &[u8]) -> bool {
    if start.len() < 9 {
        return false;
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&start[..8]);
    let n = u64::from_le_bytes(len);
    (2..=100 * 1024 * 1024).contains(&n) && start[8] == b'{'
}

/// `error` / `message` / `detail` of a JSON body, else its start.
fn json_message(text: &str) -> String {
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
        for key in ["error", "message", "detail"] {
            match value.get(key) {
                Some(serde_json::Value::String(s)) => return s.clone(),
                Some(other) if !other.is_null() => return other.to_string(),
                _ => {}
            }
        }
    }
    text.chars().take(200).collect()
}

/// The first 200 characters of a reply body (text bodies only; a stalled body is cut short).
async fn body_snippet(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < 4096 {
        match tokio::time::timeout(Duration::from_secs(5), response.chunk()).await {
            Ok(Ok(Some(chunk))) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    text.trim().chars().take(200).collect()
}

/// `Retry-After` in seconds (the HTTP-date form is ignored: the backoff applies then).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let secs: f64 = value.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// The first byte of `Content-Range: bytes <start>-<end>/<total>`.
fn content_range_start(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(CONTENT_RANGE)?.to_str().ok()?;
    let range = value.trim().strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

/// `filename="x.safetensors"` of `Content-Disposition` (path parts dropped).
fn disposition_file_name(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_DISPOSITION)?.to_str().ok()?;
    let name = value.split(';').find_map(|part| {
        let part = part.trim();
        part.strip_prefix("filename=")
            .map(|n| n.trim_matches('"').to_string())
    })?;
    safe_file_name(&name)
}

/// The last path segment of a URL, when it looks like a file name.
fn url_file_name(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next()?;
    let last = path.rsplit('/').next()?;
    last.contains('.').then(|| safe_file_name(last)).flatten()
}

/// A file name without directories or control characters.
fn safe_file_name(name: &str) -> Option<String> {
    let last = name.rsplit(['/', '\\']).next()?.trim();
    (!last.is_empty() && last != "." && last != ".." && !last.chars().any(char::is_control))
        .then(|| last.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_ids_from_download_urls() {
        assert_eq!(
            civitai_version_id("https://civitai.com/api/download/models/12345"),
            Some(12345)
        );
        assert_eq!(
            civitai_version_id("https://civitai.com/api/download/models/12345?type=Model"),
            Some(12345)
        );
        assert_eq!(
            civitai_version_id("https://example.com/x.safetensors"),
            None
        );
    }

    #[test]
    fn sniffing_tells_pages_json_and_pickles() {
        let html = sniff(b"  <!DOCTYPE html><html>", "a", "u", "x.safetensors");
        assert!(matches!(html, Some(FetchError::HtmlBody { .. })));
        let json = sniff(br#"{"error":"Unauthorized"}"#, "a", "u", "x.safetensors");
        match json {
            Some(FetchError::JsonBody { message, .. }) => assert_eq!(message, "Unauthorized"),
            other => panic!("{other:?}"),
        }
        let zip = sniff(b"PK\x03\x04rest of it", "a", "u", "x.ckpt");
        assert!(matches!(zip, Some(FetchError::Pickle { .. })));
        let pickle = sniff(b"\x80\x02}q\x00(X", "a", "u", "x.safetensors");
        assert!(matches!(pickle, Some(FetchError::Pickle { .. })));
        let mut st = 2u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{}");
        assert!(sniff(&st, "a", "u", "x.bin").is_none());
    }

    #[test]
    fn api_key_only_goes_to_its_hosts() {
        let dir = std::env::temp_dir().join(format!("stylus-fetch-unit-{}", std::process::id()));
        let cache = AdapterCache::open(&dir, 1).unwrap();
        let config = FetchConfig {
            api_key: Some("k".into()),
            auth_style: AuthStyle::Query,
            ..FetchConfig::default()
        };
        let fetcher = Fetcher::new(cache, config).unwrap();
        assert_eq!(
            fetcher.request_url("https://civitai.com/api/download/models/1?type=Model"),
            "https://civitai.com/api/download/models/1?type=Model&token=k"
        );
        assert!(fetcher.key_host("https://cdn.civitai.com/x"));
        assert!(!fetcher.key_host("https://evilcivitai.com/x"));
        assert_eq!(
            fetcher.request_url("https://example.com/x"),
            "https://example.com/x"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
