//! A bounded loopback load test of `stylus serve`'s `/v1/select`: 200 concurrent clients, a few
//! rounds, latency percentiles and errors; the peer in the same run is the library's own
//! `Stylus::select` with the same 200 concurrent calls (no HTTP), so the ratio is the cost of
//! the server.
//!
//! ```text
//! cargo run --example serve_load [-- ROUNDS]
//! ```
//!
//! Only loopback traffic (127.0.0.1, a port the OS picks); the server stops by itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use stylus::serve::{ServeOptions, Server, Setup};
use stylus::{Source, Stylus, StylusConfig};

const CLIENTS: usize = 200;
const PROMPTS: [&str; 4] = [
    "a corgi wearing a cowboy hat, watercolor",
    "portrait of an old fisherman, oil painting",
    "a cyberpunk city at night, neon, rain",
    "a castle on a hill at golden hour",
];

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1e3
}

fn report(name: &str, mut latencies: Vec<Duration>, errors: usize, wall: Duration) -> (f64, f64) {
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    println!(
        "{name:<22} requests {:>5}  errors {errors}  p50 {p50:>7.2} ms  p99 {p99:>7.2} ms  max {:>7.2} ms  \
         throughput {:>7.0}/s",
        latencies.len(),
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        latencies.len() as f64 / wall.as_secs_f64()
    );
    (p50, p99)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> stylus::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let config = StylusConfig::default();
    let server = Server::build(Setup::bundled(config.clone()), ServeOptions::default())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| stylus::StylusError::io("127.0.0.1:0", e))?;
    let url = format!("http://{}/v1/select", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    // One connection pool per client, as 200 separate processes would have.
    let clients: Vec<reqwest::Client> = (0..CLIENTS).map(|_| reqwest::Client::new()).collect();

    let mut http = Vec::new();
    let mut errors = 0;
    let started = Instant::now();
    for round in 0..=rounds {
        let tasks: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(i, client)| {
                let request = client
                    .post(&url)
                    .json(&json!({ "prompt": PROMPTS[i % PROMPTS.len()] }));
                tokio::spawn(async move {
                    let t = Instant::now();
                    let ok = match request.send().await {
                        Ok(response) => {
                            response.status().is_success() && response.bytes().await.is_ok()
                        }
                        Err(_) => false,
                    };
                    (t.elapsed(), ok)
                })
            })
            .collect();
        for task in tasks {
            let (latency, ok) = task.await.expect("a client task");
            // Round 0 warms connections and caches; it is not counted.
            if round > 0 {
                http.push(latency);
                errors += usize::from(!ok);
            }
        }
    }
    let http_wall = started.elapsed();

    let stylus = Arc::new(Stylus::open(Source::Bundled, &config)?);
    let mut library = Vec::new();
    let started = Instant::now();
    for round in 0..=rounds {
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let stylus = stylus.clone();
                tokio::spawn(async move {
                    let t = Instant::now();
                    let ok = stylus.select(PROMPTS[i % PROMPTS.len()]).await.is_ok();
                    (t.elapsed(), ok)
                })
            })
            .collect();
        for task in tasks {
            let (latency, ok) = task.await.expect("a select task");
            assert!(ok);
            if round > 0 {
                library.push(latency);
            }
        }
    }
    let library_wall = started.elapsed();

    println!("{CLIENTS} concurrent clients x {rounds} rounds (after one warm-up round)");
    let (http_p50, http_p99) = report("HTTP /v1/select", http, errors, http_wall);
    let (lib_p50, lib_p99) = report("library select", library, 0, library_wall);
    println!(
        "p99/p50: HTTP {:.1}x, library {:.1}x; HTTP/library: p50 {:.2}x, p99 {:.2}x",
        http_p99 / http_p50,
        lib_p99 / lib_p50,
        http_p50 / lib_p50,
        http_p99 / lib_p99
    );
    let _ = stop.send(());
    serving.await.expect("the server task")?;
    if errors > 0 {
        return Err(stylus::StylusError::InvalidArgument(format!(
            "{errors} requests failed"
        )));
    }
    Ok(())
}
