//! A live fetch of Civitai's catalog: `GET /api/v1/models` page by page.
//!
//! Pages are followed through `metadata.nextCursor` (or, failing that, the full `nextPage` URL)
//! until the server stops giving one or `max_pages` is reached. Every page is saved as it arrives
//! (`page-00001.json`, ... written atomically) in a cache directory named after the query, so an
//! interrupted fetch resumes after its last saved page, and the saved pages are ordinary paged
//! responses that [`crate::civitai::read_civitai_paths`] reads like any other dump. Rate limits
//! (429) and server errors are retried with backoff (`Retry-After` honoured, capped), a bounded
//! number of times. The API key, if any, comes from [`API_KEY_ENV`] and is sent as a bearer
//! header, never written to the cache.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use stylus_core::{Result, StylusError};

/// Environment variable holding the Civitai API key (optional for public models).
pub const API_KEY_ENV: &str = "CIVITAI_API_KEY";
/// The public API's origin.
pub const DEFAULT_BASE_URL: &str = "https://civitai.com";

/// What to ask `GET /api/v1/models` for.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelsQuery {
    /// `types=` (repeated): the paper indexes `LORA`.
    pub types: Vec<String>,
    /// `baseModels=` (repeated), e.g. `SD 1.5`.
    pub base_models: Vec<String>,
    /// Items per page (the API allows 1..=100).
    pub limit: u32,
    /// `nsfw=`; `None` leaves the server default.
    pub nsfw: Option<bool>,
    /// `sort=`, e.g. `Most Downloaded`.
    pub sort: Option<String>,
    /// Stop after this many pages (cached ones included); `None` fetches all.
    pub max_pages: Option<usize>,
}

impl Default for ModelsQuery {
    fn default() -> Self {
        Self {
            types: vec!["LORA".to_string()],
            base_models: vec!["SD 1.5".to_string()],
            limit: 100,
            nsfw: Some(false),
            sort: None,
            max_pages: None,
        }
    }
}

impl ModelsQuery {
    /// The query parameters, in a fixed order (the cache key depends on them).
    fn params(&self) -> Vec<(&'static str, String)> {
        let mut params = vec![("limit", self.limit.clamp(1, 100).to_string())];
        params.extend(self.types.iter().map(|t| ("types", t.clone())));
        params.extend(self.base_models.iter().map(|b| ("baseModels", b.clone())));
        if let Some(nsfw) = self.nsfw {
            params.push(("nsfw", nsfw.to_string()));
        }
        if let Some(sort) = &self.sort {
            params.push(("sort", sort.clone()));
        }
        params
    }
}

/// Retry and timeout settings of the fetch.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt of one page.
    pub max_retries: u32,
    /// Wait before the first retry (doubled each retry, up to `max_backoff`).
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Limit of one request.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 6,
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
            timeout: Duration::from_secs(60),
        }
    }
}

/// What a fetch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchReport {
    /// The directory holding the pages (give it to `read_civitai_paths`).
    pub dir: PathBuf,
    /// Pages found in the cache from an earlier run.
    pub pages_cached: usize,
    /// Pages downloaded now.
    pub pages_fetched: usize,
    /// Retried requests (429, 5xx, network errors).
    pub retries: usize,
    /// The server said there is no further page (false when `max_pages` stopped us).
    pub complete: bool,
}

/// A client of the Civitai REST API.
#[derive(Debug, Clone)]
pub struct CivitaiClient {
    base_url: String,
    api_key: Option<String>,
    retry: RetryPolicy,
    http: reqwest::Client,
}

impl CivitaiClient {
    /// A client for `base_url` (e.g. [`DEFAULT_BASE_URL`]) with the key from [`API_KEY_ENV`].
    pub fn new(base_url: &str, retry: RetryPolicy) -> Result<Self> {
        let api_key = std::env::var(API_KEY_ENV)
            .ok()
            .filter(|k| !k.trim().is_empty());
        Self::with_api_key(base_url, api_key, retry)
    }

    /// A client with an explicit key (`None`: anonymous).
    pub fn with_api_key(
        base_url: &str,
        api_key: Option<String>,
        retry: RetryPolicy,
    ) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(retry.timeout)
            .user_agent(concat!("stylus/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StylusError::Http {
                url: base_url.to_string(),
                status: None,
                message: format!("cannot build the HTTP client: {e}"),
                source: Some(Box::new(e)),
            })?;
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
            retry,
            http,
        })
    }

    /// The cache directory of `query` under `cache_root`: one folder per base URL + query.
    pub fn cache_dir(&self, query: &ModelsQuery, cache_root: &Path) -> PathBuf {
        let mut key = Sha256::new();
        key.update(self.base_url.as_bytes());
        for (name, value) in query.params() {
            key.update(format!("\n{name}={value}").as_bytes());
        }
        cache_root.join(format!("models-{}", &hex::encode(key.finalize())[..16]))
    }

    /// Fetches every page of `query` into its cache directory under `cache_root`, resuming after
    /// the pages already there.
    pub async fn fetch_models(
        &self,
        query: &ModelsQuery,
        cache_root: &Path,
    ) -> Result<FetchReport> {
        let dir = self.cache_dir(query, cache_root);
        std::fs::create_dir_all(&dir).map_err(|e| StylusError::io(&dir, e))?;
        let mut report = FetchReport {
            dir: dir.clone(),
            pages_cached: 0,
            pages_fetched: 0,
            retries: 0,
            complete: false,
        };
        let first = self.page_url(query, None);
        // Resume: walk the saved pages, each names the next one.
        let mut next = Some(first);
        let mut page_no = 1;
        loop {
            let path = page_path(&dir, page_no);
            if !path.is_file() {
                break;
            }
            let page = read_page(&path)?;
            report.pages_cached += 1;
            next = self.next_url(query, &page);
            page_no += 1;
            if next.is_none() {
                break;
            }
        }
        while let Some(url) = next.take() {
            if query.max_pages.is_some_and(|max| page_no > max) {
                return Ok(report);
            }
            let (body, retries) = self.get_with_retries(&url).await?;
            report.retries += retries;
            let page: Value = serde_json::from_slice(&body).map_err(|e| StylusError::Http {
                url: url.clone(),
                status: None,
                message: format!("reply is not JSON: {e}"),
                source: Some(Box::new(e)),
            })?;
            if !page.get("items").is_some_and(Value::is_array) {
                return Err(StylusError::Http {
                    url,
                    status: None,
                    message: "reply has no `items` array".into(),
                    source: None,
                });
            }
            write_atomically(&page_path(&dir, page_no), &body)?;
            report.pages_fetched += 1;
            tracing::info!(page = page_no, url = %url, "fetched Civitai models page");
            next = self.next_url(query, &page);
            page_no += 1;
        }
        report.complete = true;
        Ok(report)
    }

    /// The URL of a page: the query plus the cursor, if any.
    fn page_url(&self, query: &ModelsQuery, cursor: Option<&str>) -> String {
        let mut url = format!("{}/api/v1/models?", self.base_url);
        let mut params = query.params();
        if let Some(cursor) = cursor {
            params.push(("cursor", cursor.to_string()));
        }
        let encoded: Vec<String> = params
            .iter()
            .map(|(name, value)| format!("{name}={}", percent_encode(value)))
            .collect();
        url.push_str(&encoded.join("&"));
        url
    }

    /// The next page after `page`: built from `metadata.nextCursor`, else `metadata.nextPage`.
    fn next_url(&self, query: &ModelsQuery, page: &Value) -> Option<String> {
        let metadata = page.get("metadata")?;
        match metadata.get("nextCursor") {
            Some(Value::String(cursor)) if !cursor.is_empty() => {
                return Some(self.page_url(query, Some(cursor)));
            }
            Some(Value::Number(cursor)) => {
                return Some(self.page_url(query, Some(&cursor.to_string())));
            }
            _ => {}
        }
        metadata
            .get("nextPage")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .map(str::to_string)
    }

    /// One GET with retries on 429, 5xx and network errors. Returns the body and the retries.
    async fn get_with_retries(&self, url: &str) -> Result<(Vec<u8>, usize)> {
        let mut backoff = self.retry.initial_backoff;
        let mut attempt = 0u32;
        loop {
            let mut request = self.http.get(url);
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key);
            }
            let (retryable, wait, error) = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        let body = response.bytes().await.map_err(|e| StylusError::Http {
                            url: url.to_string(),
                            status: Some(status.as_u16()),
                            message: format!("reading the body: {e}"),
                            source: Some(Box::new(e)),
                        })?;
                        return Ok((body.to_vec(), attempt as usize));
                    }
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .filter(|s| s.is_finite() && *s >= 0.0)
                        .map(Duration::from_secs_f64);
                    let retryable = status.as_u16() == 429 || status.is_server_error();
                    let error = StylusError::Http {
                        url: url.to_string(),
                        status: Some(status.as_u16()),
                        message: status
                            .canonical_reason()
                            .unwrap_or("request failed")
                            .to_string(),
                        source: None,
                    };
                    (retryable, retry_after, error)
                }
                Err(e) => (
                    true,
                    None,
                    StylusError::Http {
                        url: url.to_string(),
                        status: None,
                        message: e.to_string(),
                        source: Some(Box::new(e)),
                    },
                ),
            };
            if !retryable || attempt >= self.retry.max_retries {
                return Err(error);
            }
            let wait = wait.unwrap_or(backoff).min(self.retry.max_backoff);
            tracing::warn!(%error, attempt = attempt + 1, wait_ms = wait.as_millis() as u64, "retrying");
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(self.retry.max_backoff);
            attempt += 1;
        }
    }
}

fn page_path(dir: &Path, page_no: usize) -> PathBuf {
    dir.join(format!("page-{page_no:05}.json"))
}

fn read_page(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| StylusError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| StylusError::Json {
        path: path.to_path_buf(),
        line: Some(e.line()),
        message: e.to_string(),
        source: Some(Box::new(e)),
    })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes).map_err(|e| StylusError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| StylusError::io(path, e))
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay as they are).
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_cursors() {
        let client =
            CivitaiClient::with_api_key("http://h/", None, RetryPolicy::default()).unwrap();
        let query = ModelsQuery::default();
        assert_eq!(
            client.page_url(&query, Some("a b/c")),
            "http://h/api/v1/models?limit=100&types=LORA&baseModels=SD%201.5&nsfw=false&cursor=a%20b%2Fc"
        );
        let page = serde_json::json!({"items": [], "metadata": {"nextCursor": 42}});
        assert!(
            client
                .next_url(&query, &page)
                .unwrap()
                .ends_with("cursor=42")
        );
        let page = serde_json::json!({"items": [], "metadata": {"nextPage": "http://h/p2"}});
        assert_eq!(
            client.next_url(&query, &page).as_deref(),
            Some("http://h/p2")
        );
        let page = serde_json::json!({"items": [], "metadata": {"nextCursor": null}});
        assert_eq!(client.next_url(&query, &page), None);
        let other = ModelsQuery {
            base_models: vec!["SDXL 1.0".into()],
            ..ModelsQuery::default()
        };
        let root = Path::new("/cache");
        assert_ne!(
            client.cache_dir(&query, root),
            client.cache_dir(&other, root)
        );
    }
}
