//! The live Civitai fetch against a stub `api/v1/models` server on 127.0.0.1 that serves real
//! cards (../shared/data/civitai) in cursor-linked pages, with a 429 in between. The tests that
//! serve real cards skip without the shared data (see `stylus-test-data`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use stylus_core::{AdapterId, StylusError};
use stylus_refiner::civitai::read_civitai_paths;
use stylus_refiner::civitai_api::{CivitaiClient, ModelsQuery, RetryPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The first `count` cards of part 3 of the dump, or `None` (the test is skipped) without it.
fn real_items(count: usize) -> Option<Vec<Value>> {
    let path = stylus_test_data::shared("data/civitai/civitai_lora_sfw_2023-07_part3.jsonl")?;
    Some(
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .take(count)
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
    )
}

/// What the stub saw: request targets and Authorization headers.
#[derive(Default)]
struct Seen {
    targets: Vec<String>,
    auth: Vec<Option<String>>,
}

/// Serves 3 pages of 4 of the 12 `items` (cursor c2, c3); the first request for c2 gets a 429,
/// and with `always_429` every request does (then `items` may be empty).
async fn stub_server(always_429: bool, items: Vec<Value>) -> (String, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let state = seen.clone();
    tokio::spawn(async move {
        let mut limited_once = false;
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buffer).await.unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buffer[..n]);
            }
            let text = String::from_utf8_lossy(&request).to_string();
            let target = text.split_whitespace().nth(1).unwrap_or("").to_string();
            let auth = text
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                .map(|l| l.split_once(':').unwrap().1.trim().to_string());
            {
                let mut seen = state.lock().unwrap();
                seen.targets.push(target.clone());
                seen.auth.push(auth);
            }
            let page = |range: std::ops::Range<usize>, metadata: Value| {
                json!({"items": items[range].to_vec(), "metadata": metadata}).to_string()
            };
            let (status, body) = if always_429 || (target.contains("cursor=c2") && !limited_once) {
                limited_once = true;
                (
                    "429 Too Many Requests",
                    "{\"error\":\"slow down\"}".to_string(),
                )
            } else if target.contains("cursor=c2") {
                ("200 OK", page(4..8, json!({"nextCursor": "c3"})))
            } else if target.contains("cursor=c3") {
                ("200 OK", page(8..12, json!({"currentPage": 3})))
            } else {
                (
                    "200 OK",
                    page(0..4, json!({"nextCursor": "c2", "nextPage": "ignored"})),
                )
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nRetry-After: 0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(response.as_bytes()).await.unwrap();
            socket.shutdown().await.ok();
        }
    });
    (base, seen)
}

fn fast_retries(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        timeout: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn fetches_all_pages_with_a_429_and_resumes_from_the_cache() {
    let Some(items) = real_items(12) else { return };
    let (base, seen) = stub_server(false, items.clone()).await;
    let cache = tempfile::tempdir().unwrap();
    let client =
        CivitaiClient::with_api_key(&base, Some("secret-key".into()), fast_retries(3)).unwrap();
    let query = ModelsQuery::default();

    let report = client.fetch_models(&query, cache.path()).await.unwrap();
    assert_eq!(
        (report.pages_fetched, report.pages_cached, report.retries),
        (3, 0, 1)
    );
    assert!(report.complete);
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.targets.len(), 4);
        assert!(
            seen.targets[0].starts_with("/api/v1/models?limit=100&types=LORA&baseModels=SD%201.5")
        );
        assert!(
            seen.auth
                .iter()
                .all(|a| a.as_deref() == Some("Bearer secret-key"))
        );
    }
    let cached = std::fs::read_to_string(report.dir.join("page-00001.json")).unwrap();
    assert!(!cached.contains("secret-key"));

    // The saved pages are an ordinary dump: 12 real cards, none malformed.
    let read = read_civitai_paths(std::slice::from_ref(&report.dir));
    assert!(read.malformed.is_empty());
    let ids: Vec<AdapterId> = read.entries.iter().map(|e| e.card.id.clone()).collect();
    let expected: Vec<AdapterId> = items
        .iter()
        .map(|i| AdapterId::Civitai(i["id"].as_u64().unwrap()))
        .collect();
    assert_eq!(ids, expected);

    // Interrupted after page 2: the rerun asks only for page 3.
    std::fs::remove_file(report.dir.join("page-00003.json")).unwrap();
    let again = client.fetch_models(&query, cache.path()).await.unwrap();
    assert_eq!((again.pages_cached, again.pages_fetched), (2, 1));
    let seen = seen.lock().unwrap();
    assert_eq!(seen.targets.len(), 5);
    assert!(seen.targets[4].ends_with("cursor=c3"));
}

#[tokio::test]
async fn max_pages_stops_early_and_a_later_run_continues() {
    let Some(items) = real_items(12) else { return };
    let (base, _) = stub_server(false, items).await;
    let cache = tempfile::tempdir().unwrap();
    let client = CivitaiClient::with_api_key(&base, None, fast_retries(3)).unwrap();
    let first = ModelsQuery {
        max_pages: Some(1),
        ..ModelsQuery::default()
    };
    let report = client.fetch_models(&first, cache.path()).await.unwrap();
    assert_eq!((report.pages_fetched, report.complete), (1, false));
    let rest = client
        .fetch_models(&ModelsQuery::default(), cache.path())
        .await
        .unwrap();
    assert_eq!(
        (rest.pages_cached, rest.pages_fetched, rest.complete),
        (1, 2, true)
    );
}

#[tokio::test]
async fn retries_are_bounded() {
    let (base, seen) = stub_server(true, Vec::new()).await;
    let cache = tempfile::tempdir().unwrap();
    let client = CivitaiClient::with_api_key(&base, None, fast_retries(2)).unwrap();
    let err = client
        .fetch_models(&ModelsQuery::default(), cache.path())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StylusError::Http {
                status: Some(429),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(seen.lock().unwrap().targets.len(), 3);
}
