//! The downloader and the cache against a stub HTTP server on 127.0.0.1 that serves real
//! safetensors LoRAs generated here, with injected faults.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use safetensors::{Dtype, tensor::TensorView};
use sha2::{Digest, Sha256};
use stylus_fetch::{
    AdapterCache, AuthStyle, FetchConfig, FetchError, FetchRequest, Fetcher, HubCheckpoint,
    HubOptions, VerifyProblem, fetch_missing, plan_adapters, resolve_checkpoint,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A request as the stub saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: HashMap<String, String>,
}

/// What the stub answers.
#[derive(Clone)]
enum Reply {
    /// A whole response.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Arc<Vec<u8>>,
    },
    /// A 200 announcing the whole body, cut after `cut` bytes (connection closed).
    Cut { body: Arc<Vec<u8>>, cut: usize },
    /// A 200 announcing the whole body, silent after `sent` bytes.
    Stall { body: Arc<Vec<u8>>, sent: usize },
}

type Handler = Arc<dyn Fn(&Seen, usize) -> Reply + Send + Sync>;

struct Stub {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Stub {
    async fn start(handler: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Self {
        let handler: Handler = Arc::new(handler);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let handler = Arc::clone(&handler);
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&buffer).into_owned();
                    let mut lines = text.split("\r\n");
                    let path = lines
                        .next()
                        .and_then(|l| l.split(' ').nth(1))
                        .unwrap_or("/")
                        .to_string();
                    let headers = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .collect();
                    let request = Seen { path, headers };
                    let hits = {
                        let mut log = log.lock().unwrap();
                        log.push(request.clone());
                        let route = request.path.split('?').next().unwrap_or("");
                        log.iter()
                            .filter(|s| s.path.split('?').next() == Some(route))
                            .count()
                    };
                    let reply = handler(&request, hits);
                    let head = |status: u16, headers: &[(String, String)], len: usize| {
                        let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {len}\r\n");
                        for (k, v) in headers {
                            head.push_str(&format!("{k}: {v}\r\n"));
                        }
                        head.push_str("Connection: close\r\n\r\n");
                        head.into_bytes()
                    };
                    match reply {
                        Reply::Full {
                            status,
                            headers,
                            body,
                        } => {
                            let _ = socket.write_all(&head(status, &headers, body.len())).await;
                            let _ = socket.write_all(&body).await;
                        }
                        Reply::Cut { body, cut } => {
                            let _ = socket.write_all(&head(200, &[], body.len())).await;
                            let _ = socket.write_all(&body[..cut]).await;
                        }
                        Reply::Stall { body, sent } => {
                            let _ = socket.write_all(&head(200, &[], body.len())).await;
                            let _ = socket.write_all(&body[..sent]).await;
                            let _ = socket.flush().await;
                            tokio::time::sleep(Duration::from_secs(60)).await;
                        }
                    }
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self { base, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn hits(&self, path: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.path.split('?').next() == Some(path))
            .count()
    }
}

/// Serves `body` whole, or from a `Range: bytes=N-` with 206.
fn serve(body: &Arc<Vec<u8>>, request: &Seen, name: &str) -> Reply {
    let disposition = (
        "Content-Disposition".to_string(),
        format!("attachment; filename=\"{name}\""),
    );
    let octets = (
        "Content-Type".to_string(),
        "application/octet-stream".to_string(),
    );
    if let Some(range) = request.headers.get("range") {
        let (start, end) = byte_range(range, body.len());
        let content_range = (
            "Content-Range".to_string(),
            format!("bytes {start}-{end}/{}", body.len()),
        );
        return Reply::Full {
            status: 206,
            headers: vec![disposition, octets, content_range],
            body: Arc::new(body[start..=end].to_vec()),
        };
    }
    Reply::Full {
        status: 200,
        headers: vec![disposition, octets],
        body: Arc::clone(body),
    }
}

/// The inclusive byte range of `bytes=A-` or `bytes=A-B` in a body of `len` bytes.
fn byte_range(range: &str, len: usize) -> (usize, usize) {
    let (start, end) = range.trim_start_matches("bytes=").split_once('-').unwrap();
    let start: usize = start.parse().unwrap();
    let end = end.parse().map_or(len - 1, |end: usize| end.min(len - 1));
    (start, end)
}

fn text(status: u16, content_type: &str, body: &str) -> Reply {
    Reply::Full {
        status,
        headers: vec![("Content-Type".into(), content_type.into())],
        body: Arc::new(body.as_bytes().to_vec()),
    }
}

/// A small SD 1.x kohya LoRA (cross-attention reads 768 features) with `extra` padding columns
/// (to make large files), as safetensors bytes.
fn sd1_lora(extra: usize, seed: u8) -> Vec<u8> {
    let key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k";
    let down: Vec<u8> = (0..4 * 768 * 4)
        .map(|i| (i as u8).wrapping_mul(seed))
        .collect();
    let up = vec![0u8; 320 * 4 * 4];
    let pad = vec![seed; 4 * extra.max(1) * 4];
    let tensors = vec![
        (
            format!("{key}.lora_down.weight"),
            TensorView::new(Dtype::F32, vec![4, 768], &down).unwrap(),
        ),
        (
            format!("{key}.lora_up.weight"),
            TensorView::new(Dtype::F32, vec![320, 4], &up).unwrap(),
        ),
        (
            "lora_unet_mid_block_attentions_0_proj_out.lora_up.weight".to_string(),
            TensorView::new(Dtype::F32, vec![extra.max(1), 4], &pad).unwrap(),
        ),
    ];
    safetensors::serialize(tensors, None).unwrap()
}

/// A LoRA with no structural evidence whose metadata says SDXL.
fn sdxl_by_metadata() -> Vec<u8> {
    let down = vec![0u8; 4 * 1280 * 4];
    let tensors = vec![(
        "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight".to_string(),
        TensorView::new(Dtype::F32, vec![4, 1280], &down).unwrap(),
    )];
    let metadata = HashMap::from([(
        "ss_base_model_version".to_string(),
        "sdxl_base_v1-0".to_string(),
    )]);
    safetensors::serialize(tensors, Some(metadata)).unwrap()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn config() -> FetchConfig {
    FetchConfig {
        timeout: Duration::from_secs(2),
        retries: 3,
        deadline: Duration::from_secs(60),
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        api_key: Some("secret-key".into()),
        api_key_hosts: vec!["127.0.0.1".into()],
        ..FetchConfig::default()
    }
}

fn fetcher(dir: &std::path::Path, config: FetchConfig) -> Fetcher {
    Fetcher::new(AdapterCache::open(dir, 10_000_000_000).unwrap(), config).unwrap()
}

fn request(url: String, sha256: Option<String>, name: &str) -> FetchRequest {
    FetchRequest {
        label: format!("7 \"Test\" ({name})"),
        url,
        sha256,
        file_name: Some(name.into()),
        model_id: Some(7),
        version_id: Some(70),
    }
}

/// Nothing but the cache's own bookkeeping is left in `tmp/` (no part files).
fn no_part_files(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir.join("tmp"))
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().ends_with(".part"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_verifies_caches_and_sends_the_bearer_key() {
    let body = Arc::new(sd1_lora(16, 3));
    let served = Arc::clone(&body);
    let stub = Stub::start(move |r, _| serve(&served, r, "detail_tweaker.safetensors")).await;
    let dir = tempfile::tempdir().unwrap();
    let fetcher = fetcher(dir.path(), config());
    let mut wanted = FetchRequest::url(stub.url("/api/download/models/70"));
    wanted.sha256 = Some(sha(&body).to_uppercase().to_lowercase());
    let first = fetcher.fetch(&wanted).await.unwrap();
    assert!(first.downloaded);
    assert_eq!(std::fs::read(&first.path).unwrap(), *body);
    assert_eq!(first.sha256, sha(&body));
    let again = fetcher.fetch(&wanted).await.unwrap();
    assert!(!again.downloaded);
    assert_eq!(stub.hits("/api/download/models/70"), 1);
    let seen = stub.seen();
    assert_eq!(
        seen[0].headers.get("authorization").map(String::as_str),
        Some("Bearer secret-key")
    );
    let entries = fetcher.cache().list().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].file_name, "detail_tweaker.safetensors");
    assert_eq!(entries[0].alias(), "detail_tweaker");
    assert_eq!(entries[0].version_id, Some(70));
    assert_eq!(entries[0].size, body.len() as u64);
    assert!(no_part_files(dir.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_query_style_and_no_key_for_other_hosts() {
    let body = Arc::new(sd1_lora(1, 5));
    let served = Arc::clone(&body);
    let stub = Stub::start(move |r, _| serve(&served, r, "a.safetensors")).await;
    let dir = tempfile::tempdir().unwrap();
    let query = FetchConfig {
        auth_style: AuthStyle::Query,
        ..config()
    };
    fetcher(dir.path(), query)
        .fetch(&request(stub.url("/q"), Some(sha(&body)), "a.safetensors"))
        .await
        .unwrap();
    assert!(stub.seen()[0].path.ends_with("?token=secret-key"));
    assert!(!stub.seen()[0].headers.contains_key("authorization"));
    let other = tempfile::tempdir().unwrap();
    let elsewhere = FetchConfig {
        api_key_hosts: vec!["civitai.com".into()],
        ..config()
    };
    fetcher(other.path(), elsewhere)
        .fetch(&request(stub.url("/q2"), Some(sha(&body)), "a.safetensors"))
        .await
        .unwrap();
    let last = stub.seen().pop().unwrap();
    assert!(!last.headers.contains_key("authorization") && !last.path.contains("token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_honours_retry_after_then_succeeds() {
    let body = Arc::new(sd1_lora(1, 7));
    let served = Arc::clone(&body);
    let stub = Stub::start(move |r, hits| {
        if hits == 1 {
            Reply::Full {
                status: 429,
                headers: vec![("Retry-After".into(), "1".into())],
                body: Arc::new(b"slow down".to_vec()),
            }
        } else {
            serve(&served, r, "a.safetensors")
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    fetcher(dir.path(), config())
        .fetch(&request(stub.url("/f"), Some(sha(&body)), "a.safetensors"))
        .await
        .unwrap();
    // The backoff alone is 10 ms; the server asked for a second.
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(stub.hits("/f"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_then_given_up() {
    let body = Arc::new(sd1_lora(1, 9));
    let served = Arc::clone(&body);
    let stub = Stub::start(move |r, hits| match r.path.as_str() {
        "/flaky" if hits <= 2 => text(503, "text/plain", "busy"),
        "/flaky" => serve(&served, r, "a.safetensors"),
        _ => text(500, "text/plain", "boom"),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let fetcher = fetcher(dir.path(), config());
    fetcher
        .fetch(&request(
            stub.url("/flaky"),
            Some(sha(&body)),
            "a.safetensors",
        ))
        .await
        .unwrap();
    assert_eq!(stub.hits("/flaky"), 3);
    // Another version: a request without a hash is matched by its version id.
    let mut down = request(stub.url("/down"), None, "b.safetensors");
    down.version_id = Some(71);
    let error = fetcher.fetch(&down).await.unwrap_err();
    match &error {
        FetchError::RetriesExhausted {
            attempts, source, ..
        } => {
            assert_eq!(*attempts, 4);
            assert!(matches!(**source, FetchError::Http { status: 500, .. }));
        }
        other => panic!("{other:?}"),
    }
    assert!(error.to_string().contains("b.safetensors"), "{error}");
    assert_eq!(stub.hits("/down"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_transfer_times_out_and_resumes_with_range() {
    let body = Arc::new(sd1_lora(4096, 11));
    let served = Arc::clone(&body);
    let half = body.len() / 2;
    let stub = Stub::start(move |r, hits| {
        if hits == 1 {
            Reply::Stall {
                body: Arc::clone(&served),
                sent: half,
            }
        } else {
            serve(&served, r, "a.safetensors")
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let quick = FetchConfig {
        timeout: Duration::from_millis(500),
        ..config()
    };
    let started = Instant::now();
    let fetched = fetcher(dir.path(), quick)
        .fetch(&request(stub.url("/s"), Some(sha(&body)), "a.safetensors"))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(std::fs::read(fetched.path).unwrap(), *body);
    let seen = stub.seen();
    assert_eq!(seen.len(), 2);
    let range = seen[1].headers.get("range").expect("the retry resumes");
    assert_eq!(range, &format!("bytes={half}-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_100_mb_download_resumes_and_finishes_with_the_right_hash() {
    // 100 MB: 4 x 6.25M f32 padding values plus the LoRA tensors.
    let body = Arc::new(sd1_lora(6_250_000, 13));
    assert!(body.len() >= 100_000_000);
    let served = Arc::clone(&body);
    let cut = 37_000_000;
    let stub = Stub::start(move |r, hits| {
        if hits == 1 {
            Reply::Cut {
                body: Arc::clone(&served),
                cut,
            }
        } else {
            serve(&served, r, "big.safetensors")
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let fetched = fetcher(dir.path(), config())
        .fetch(&request(
            stub.url("/big"),
            Some(sha(&body)),
            "big.safetensors",
        ))
        .await
        .unwrap();
    assert_eq!(fetched.sha256, sha(&body));
    assert_eq!(fetched.size, body.len() as u64);
    let seen = stub.seen();
    assert_eq!(seen.len(), 2, "one cut, one resume");
    assert_eq!(
        seen[1].headers.get("range").map(String::as_str),
        Some(format!("bytes={cut}-").as_str()),
        "the resume continues, it does not restart"
    );
    assert!(no_part_files(dir.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_chain_is_followed() {
    let body = Arc::new(sd1_lora(1, 17));
    let served = Arc::clone(&body);
    let stub = Stub::start(move |r, _| {
        let to = |location: &str| Reply::Full {
            status: 302,
            headers: vec![("Location".into(), location.into())],
            body: Arc::new(Vec::new()),
        };
        match r.path.as_str() {
            "/api/download/models/5" => to("/r2"),
            "/r2" => to("/cdn/file.safetensors"),
            _ => serve(&served, r, "file.safetensors"),
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let fetched = fetcher(dir.path(), config())
        .fetch(&FetchRequest::url(stub.url("/api/download/models/5")))
        .await
        .unwrap();
    assert_eq!(fetched.sha256, sha(&body));
    assert_eq!(stub.hits("/cdn/file.safetensors"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_and_json_bodies_served_with_200_are_refused() {
    let stub = Stub::start(|r, _| match r.path.as_str() {
        "/html" => text(
            200,
            "text/html; charset=utf-8",
            "<!DOCTYPE html><html>Log in</html>",
        ),
        "/json" => text(200, "application/json", r#"{"error":"Model not found"}"#),
        // An error body whose server did not say it is JSON.
        _ => text(
            200,
            "application/octet-stream",
            r#"{"error":"Unauthorized","x":"yyyyyyy"}"#,
        ),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let fetcher = fetcher(dir.path(), config());
    let html = fetcher
        .fetch(&request(stub.url("/html"), None, "a.safetensors"))
        .await
        .unwrap_err();
    assert!(matches!(html, FetchError::HtmlBody { .. }), "{html:?}");
    assert!(html.to_string().contains("a.safetensors"));
    let json = fetcher
        .fetch(&request(stub.url("/json"), None, "b.safetensors"))
        .await
        .unwrap_err();
    match json {
        FetchError::JsonBody { message, .. } => assert_eq!(message, "Model not found"),
        other => panic!("{other:?}"),
    }
    let sniffed = fetcher
        .fetch(&request(stub.url("/sniffed"), None, "c.safetensors"))
        .await
        .unwrap_err();
    assert!(
        matches!(sniffed, FetchError::JsonBody { .. }),
        "{sniffed:?}"
    );
    assert_eq!(stub.seen().len(), 3, "content errors are not retried");
    assert!(fetcher.cache().list().unwrap().is_empty());
    assert!(no_part_files(dir.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pickles_are_refused() {
    let stub = Stub::start(|r, _| {
        let mut zip = b"PK\x03\x04".to_vec();
        zip.extend(std::iter::repeat_n(0u8, 64));
        let mut pickle = vec![0x80, 0x02];
        pickle.extend(std::iter::repeat_n(b'q', 64));
        let body = if r.path == "/zip" { zip } else { pickle };
        Reply::Full {
            status: 200,
            headers: vec![],
            body: Arc::new(body),
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let fetcher = fetcher(dir.path(), config());
    for (path, name) in [("/zip", "style.ckpt"), ("/pkl", "style.pt")] {
        let error = fetcher
            .fetch(&request(stub.url(path), None, name))
            .await
            .unwrap_err();
        assert!(matches!(error, FetchError::Pickle { .. }), "{error:?}");
        assert!(error.to_string().contains(name), "{error}");
    }
    assert!(fetcher.cache().list().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_sha256_deletes_the_file_and_names_both_hashes() {
    let body = Arc::new(sd1_lora(1, 19));
    let served = Arc::clone(&body);
    let stub = Stub::start(move |r, _| serve(&served, r, "a.safetensors")).await;
    let dir = tempfile::tempdir().unwrap();
    let wrong = "ab".repeat(32);
    let error = fetcher(dir.path(), config())
        .fetch(&request(
            stub.url("/f"),
            Some(wrong.clone()),
            "a.safetensors",
        ))
        .await
        .unwrap_err();
    match &error {
        FetchError::HashMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &wrong);
            assert_eq!(actual, &sha(&body));
        }
        other => panic!("{other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.contains(&wrong) && message.contains(&sha(&body)),
        "{message}"
    );
    assert!(no_part_files(dir.path()));
    assert!(
        std::fs::read_dir(dir.path().join("blobs"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_over_the_size_cap_are_refused() {
    let body = Arc::new(sd1_lora(10_000, 23));
    let served = Arc::clone(&body);
    let stub = Stub::start(move |r, _| serve(&served, r, "a.safetensors")).await;
    let dir = tempfile::tempdir().unwrap();
    let small = FetchConfig {
        max_file_bytes: 50_000,
        ..config()
    };
    let error = fetcher(dir.path(), small)
        .fetch(&request(stub.url("/f"), None, "a.safetensors"))
        .await
        .unwrap_err();
    match error {
        FetchError::TooLarge { size, cap, .. } => {
            assert_eq!(size, body.len() as u64);
            assert_eq!(cap, 50_000);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(stub.hits("/f"), 1);
    assert!(no_part_files(dir.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lora_for_another_base_model_is_refused() {
    let body = Arc::new(sdxl_by_metadata());
    let served = Arc::clone(&body);
    let stub = Stub::start(move |r, _| serve(&served, r, "xl.safetensors")).await;
    let dir = tempfile::tempdir().unwrap();
    let error = fetcher(dir.path(), config())
        .fetch(&request(stub.url("/f"), Some(sha(&body)), "xl.safetensors"))
        .await
        .unwrap_err();
    match &error {
        FetchError::BaseModelMismatch {
            found, evidence, ..
        } => {
            assert_eq!(found, "sdxl");
            assert!(evidence.contains("ss_base_model_version"), "{evidence}");
        }
        other => panic!("{other:?}"),
    }
    assert!(error.to_string().contains("xl.safetensors"));
    assert!(no_part_files(dir.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_forbids_the_network_but_serves_the_cache() {
    let body = Arc::new(sd1_lora(1, 29));
    let served = Arc::clone(&body);
    let stub = Stub::start(move |r, _| serve(&served, r, "a.safetensors")).await;
    let dir = tempfile::tempdir().unwrap();
    let offline = FetchConfig {
        offline: true,
        ..config()
    };
    let wanted = request(stub.url("/f"), Some(sha(&body)), "a.safetensors");
    let error = fetcher(dir.path(), offline.clone())
        .fetch(&wanted)
        .await
        .unwrap_err();
    assert!(matches!(error, FetchError::Offline { .. }), "{error:?}");
    assert!(error.to_string().contains("--offline"));
    assert_eq!(stub.seen().len(), 0);
    fetcher(dir.path(), config()).fetch(&wanted).await.unwrap();
    let cached = fetcher(dir.path(), offline).fetch(&wanted).await.unwrap();
    assert!(!cached.downloaded);
    assert_eq!(stub.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fetchers_on_one_cache_download_a_file_once() {
    let body = Arc::new(sd1_lora(200_000, 31));
    let served = Arc::clone(&body);
    let stub = Stub::start(move |r, _| serve(&served, r, "a.safetensors")).await;
    let dir = tempfile::tempdir().unwrap();
    let one = fetcher(dir.path(), config());
    let two = fetcher(dir.path(), config());
    let wanted = request(stub.url("/f"), Some(sha(&body)), "a.safetensors");
    let (a, b) = tokio::join!(one.fetch(&wanted), two.fetch(&wanted));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.path, b.path);
    assert!(a.downloaded != b.downloaded);
    assert_eq!(stub.hits("/f"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_the_cache_under_its_limit_and_spares_pinned_files() {
    let bodies: Vec<Arc<Vec<u8>>> = (0..50u8)
        .map(|i| Arc::new(sd1_lora(2000, i.wrapping_mul(2).wrapping_add(1))))
        .collect();
    let size = bodies[0].len() as u64;
    let served = bodies.clone();
    let stub = Stub::start(move |r, _| {
        let i: usize = r.path.trim_start_matches("/f").parse().unwrap();
        serve(&served[i], r, &format!("lora{i}.safetensors"))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let limit = size * 5 + size / 2;
    let cache = AdapterCache::open(dir.path(), limit).unwrap();
    let fetcher = Fetcher::new(cache.clone(), config()).unwrap();
    let first = fetcher
        .fetch(&request(
            stub.url("/f0"),
            Some(sha(&bodies[0])),
            "lora0.safetensors",
        ))
        .await
        .unwrap();
    for (i, body) in bodies.iter().enumerate().skip(1) {
        let fetched = fetcher
            .fetch(&request(
                stub.url(&format!("/f{i}")),
                Some(sha(body)),
                &format!("lora{i}.safetensors"),
            ))
            .await
            .unwrap();
        drop(fetched);
        assert!(cache.total_bytes().unwrap() <= limit, "after fetch {i}");
        assert!(first.path.is_file(), "the pinned file survives fetch {i}");
    }
    assert_eq!(cache.list().unwrap().len(), 5);
    drop(first);
    let report = cache.evict_to(size).unwrap();
    assert_eq!(report.total, size);
    assert_eq!(cache.list().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_corruption_and_prune_removes_orphans() {
    let body = Arc::new(sd1_lora(1, 37));
    let served = Arc::clone(&body);
    let stub = Stub::start(move |r, _| serve(&served, r, "a.safetensors")).await;
    let dir = tempfile::tempdir().unwrap();
    let fetcher = fetcher(dir.path(), config());
    let fetched = fetcher
        .fetch(&request(stub.url("/f"), Some(sha(&body)), "a.safetensors"))
        .await
        .unwrap();
    assert!(fetcher.cache().verify().unwrap().is_empty());
    let mut bytes = body.to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&fetched.path, &bytes).unwrap();
    let orphan = fetcher.cache().blob_path(&"cd".repeat(32));
    std::fs::write(&orphan, b"x").unwrap();
    let problems = fetcher.cache().verify().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, VerifyProblem::Corrupt { .. }))
    );
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, VerifyProblem::Orphan { .. }))
    );
    let report = fetcher.cache().prune(None).unwrap();
    assert!(report.freed >= 1);
    assert!(!orphan.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_missing_takes_a_select_plan() {
    let body = Arc::new(sd1_lora(1, 41));
    let served = Arc::clone(&body);
    let stub = Stub::start(move |r, _| serve(&served, r, "detail.safetensors")).await;
    let adapter = serde_json::json!({
        "id": 7, "title": "Detail", "alias": "detail", "weight": 0.4, "category": null,
        "trigger_words": [],
        "file": {"name": "detail.safetensors", "sha256": sha(&body).to_uppercase(),
                 "download_url": stub.url("/api/download/models/70")}
    });
    let local = serde_json::json!({
        "id": 8, "title": "Mine", "alias": "mine", "weight": 0.4, "category": null,
        "trigger_words": [], "file": {"name": "mine.safetensors"}
    });
    let plan = serde_json::json!({
        "prompt": "p", "topics": [{"text": "a", "adapters": [adapter, local]},
                                  {"text": "b", "adapters": [adapter]}],
        "masks": [], "a1111_prompt": "", "candidates": 2, "timings_ms": {}
    });
    let adapters = plan_adapters(&format!("{plan}\n{plan}\n")).unwrap();
    assert_eq!(adapters.len(), 2);
    let dir = tempfile::tempdir().unwrap();
    let fetcher = fetcher(dir.path(), config());
    let fetched = fetch_missing(&adapters, &fetcher, |a| a.alias == "mine")
        .await
        .unwrap();
    assert_eq!(fetched.len(), 1);
    assert_eq!(std::fs::read(&fetched[0].1.path).unwrap(), *body);
    assert!(
        fetcher
            .cache()
            .find(&adapters[0])
            .unwrap()
            .is_some_and(|e| e.version_id == Some(70))
    );
    // An adapter without a download URL is a typed error naming it.
    let error = fetch_missing(&adapters, &fetcher, |_| false)
        .await
        .unwrap_err();
    assert!(
        matches!(error, FetchError::NoDownloadUrl { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("mine.safetensors"));
}

/// The commit of the stub hub repo.
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// The tiny diffusers model of stylus-diffusion's parity fixtures as a hub repo's files (plus a
/// model_index.json and a pickle the resolver must not fetch).
fn tiny_hub_repo() -> HashMap<String, Arc<Vec<u8>>> {
    let fixtures = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../stylus-diffusion/tests/fixtures/sd/tiny-diffusers"
    );
    let mut files: HashMap<String, Arc<Vec<u8>>> = [
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.fp16.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
    ]
    .into_iter()
    .map(|f| {
        let bytes = std::fs::read(format!("{fixtures}/{f}")).unwrap();
        (f.to_string(), Arc::new(bytes))
    })
    .collect();
    files.insert("model_index.json".into(), Arc::new(b"{}".to_vec()));
    files.insert(
        "unet/diffusion_pytorch_model.bin".into(),
        Arc::new(b"PK pickle".to_vec()),
    );
    files
}

/// Answers as the hub does: the repo listing, and each file (whole or a byte range) with its
/// commit, etag (a safetensors file's sha256, or `etag_of`'s) and size.
fn hub_reply(
    files: &HashMap<String, Arc<Vec<u8>>>,
    request: &Seen,
    etag_of: &dyn Fn(&str, &[u8]) -> String,
) -> Reply {
    let path = request.path.split('?').next().unwrap();
    if path == "/api/models/org/tiny-sd/revision/main" {
        let siblings: Vec<serde_json::Value> = files
            .keys()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let body = serde_json::json!({ "sha": COMMIT, "siblings": siblings }).to_string();
        return text(200, "application/json", &body);
    }
    let Some(file) = path.strip_prefix("/org/tiny-sd/resolve/main/") else {
        return text(404, "text/plain", "no such repo");
    };
    let Some(body) = files.get(file) else {
        return text(404, "text/plain", "no such file");
    };
    let range = request
        .headers
        .get("range")
        .map_or((0, body.len() - 1), |r| byte_range(r, body.len()));
    Reply::Full {
        status: 206,
        headers: vec![
            ("X-Repo-Commit".into(), COMMIT.into()),
            (
                "X-Linked-Etag".into(),
                format!("\"{}\"", etag_of(file, body)),
            ),
            (
                "Content-Range".into(),
                format!("bytes {}-{}/{}", range.0, range.1, body.len()),
            ),
        ],
        body: Arc::new(body[range.0..=range.1].to_vec()),
    }
}

/// LFS files' etags are their sha256; other files get a git blob-like id.
fn hub_etag(file: &str, body: &[u8]) -> String {
    if file.ends_with(".safetensors") {
        sha(body)
    } else {
        sha(body)[..40].to_string()
    }
}

fn hub_options(cache: &std::path::Path, endpoint: &str) -> HubOptions {
    HubOptions {
        endpoint: endpoint.into(),
        deadline: Duration::from_secs(30),
        ..HubOptions::from_vars(|_| None, Some(cache.to_path_buf())).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_checkpoint_lands_in_the_hub_cache_layout_and_is_found_there_offline() {
    let files = Arc::new(tiny_hub_repo());
    let stub = Stub::start({
        let files = Arc::clone(&files);
        move |request, _| hub_reply(&files, request, &hub_etag)
    })
    .await;
    let cache = tempfile::tempdir().unwrap();
    let checkpoint = HubCheckpoint::parse("hf:org/tiny-sd").unwrap().unwrap();
    let options = hub_options(cache.path(), &stub.base);
    let snapshot = resolve_checkpoint(&checkpoint, &options).await.unwrap();

    let repo_dir = cache.path().join("models--org--tiny-sd");
    assert_eq!(snapshot, repo_dir.join("snapshots").join(COMMIT));
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main"))
            .unwrap()
            .trim(),
        COMMIT
    );
    for (file, body) in files.iter() {
        let fetched = std::fs::read(snapshot.join(file));
        if file.ends_with(".bin") {
            assert!(fetched.is_err(), "the pickle {file} was fetched");
        } else {
            assert_eq!(&fetched.unwrap(), body.as_ref(), "{file}");
        }
    }
    // Weight files are links into blobs/ named by their sha256.
    let unet = "unet/diffusion_pytorch_model.safetensors";
    let blob = std::fs::canonicalize(snapshot.join(unet)).unwrap();
    assert_eq!(
        blob,
        repo_dir
            .join("blobs")
            .join(sha(&files[unet]))
            .canonicalize()
            .unwrap()
    );

    // Offline, the cache answers alone.
    let requests = stub.seen().len();
    let offline = HubOptions {
        offline: true,
        ..options.clone()
    };
    assert_eq!(
        resolve_checkpoint(&checkpoint, &offline).await.unwrap(),
        snapshot
    );
    let single = HubCheckpoint::parse(&format!("hf:org/tiny-sd/{unet}"))
        .unwrap()
        .unwrap();
    assert_eq!(
        resolve_checkpoint(&single, &offline).await.unwrap(),
        snapshot.join(unet)
    );
    assert_eq!(stub.seen().len(), requests);

    // Offline with an empty cache: a clear error, no request.
    let empty = tempfile::tempdir().unwrap();
    let err = resolve_checkpoint(
        &checkpoint,
        &HubOptions {
            offline: true,
            ..hub_options(empty.path(), &stub.base)
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("hf:org/tiny-sd@main") && err.contains("offline"),
        "{err}"
    );
    assert_eq!(stub.seen().len(), requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_file_that_does_not_hash_to_its_etag_is_deleted_and_named() {
    let files = Arc::new(tiny_hub_repo());
    let unet = "unet/diffusion_pytorch_model.safetensors";
    let claimed = sha(b"another file");
    let stub = Stub::start({
        let (files, claimed) = (Arc::clone(&files), claimed.clone());
        move |request, _| {
            hub_reply(&files, request, &|file, body| {
                if file == unet {
                    claimed.clone()
                } else {
                    hub_etag(file, body)
                }
            })
        }
    })
    .await;
    let cache = tempfile::tempdir().unwrap();
    let checkpoint = HubCheckpoint::parse("hf:org/tiny-sd").unwrap().unwrap();
    let err = resolve_checkpoint(&checkpoint, &hub_options(cache.path(), &stub.base))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, FetchError::HashMismatch { .. }), "{text}");
    assert!(
        text.contains(unet) && text.contains(&claimed) && text.contains(&sha(&files[unet])),
        "{text}"
    );
    let blobs = cache.path().join("models--org--tiny-sd/blobs");
    assert!(!blobs.join(&claimed).exists());
    let snapshot = cache
        .path()
        .join("models--org--tiny-sd/snapshots")
        .join(COMMIT);
    assert!(!snapshot.join(unet).exists());
}
