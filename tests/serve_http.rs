//! `stylus serve` over real HTTP on loopback (reqwest as the client), with the tiny random-weight
//! SD model (widened to CLIP's vocabulary) and LoRA fixtures in a temporary `--lora-dir`.
#![cfg(feature = "serve")]

#[path = "../crates/stylus-diffusion/tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use stylus::render::Device;
use stylus::serve::{Limits, ServeOptions, Server, Setup};
use stylus::{Source, Stylus, StylusConfig};

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/stylus-diffusion/tests/fixtures")
        .join(path)
}

struct TestServer {
    addr: SocketAddr,
    client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<stylus::Result<()>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }

    /// Stops the server and waits for it to return.
    async fn stop(mut self) {
        self.shutdown.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
    }
}

/// A server with the tiny model (when `render`) and three LoRAs in its folder.
async fn start(options: ServeOptions, render: bool) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let loras = dir.path().join("loras");
    std::fs::create_dir(&loras).unwrap();
    for name in ["kohya_lora", "peft", "lokr"] {
        let file = format!("{name}.safetensors");
        std::fs::copy(fixture(&format!("lora/{file}")), loras.join(&file)).unwrap();
    }
    let checkpoint = render.then(|| {
        common::full_vocab::full_vocab_checkpoint(&fixture("sd/tiny-ldm.safetensors"), dir.path())
    });
    let setup = Setup {
        config: StylusConfig::default(),
        index: None,
        checkpoint,
        device: Device::Cpu,
        lora_dir: Some(loras),
    };
    let server = tokio::task::spawn_blocking(move || Server::build(setup, options))
        .await
        .unwrap()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(server.serve(listener, async move {
        let _ = signal.await;
    }));
    TestServer {
        addr,
        client: reqwest::Client::new(),
        shutdown: Some(shutdown),
        handle,
        _dir: dir,
    }
}

/// A small, fast txt2img request.
fn txt2img(prompt: &str, seed: i64) -> Value {
    json!({
        "prompt": prompt,
        "negative_prompt": "blurry",
        "steps": 3,
        "cfg_scale": 5.0,
        "sampler_name": "Euler a",
        "seed": seed,
        "width": 16,
        "height": 16,
        "batch_size": 2,
        "n_iter": 1,
    })
}

/// A render that runs until interrupted (1000 steps).
/// Sends [`long_txt2img`] in the background.
fn spawn_long_render(server: &TestServer) -> tokio::task::JoinHandle<reqwest::Response> {
    let client = server.client.clone();
    let url = server.url("/sdapi/v1/txt2img");
    tokio::spawn(async move { client.post(url).json(&long_txt2img()).send().await.unwrap() })
}

fn long_txt2img() -> Value {
    json!({
        "prompt": "a very long render",
        "steps": 1000,
        "cfg_scale": 5.0,
        "sampler_name": "Euler",
        "seed": 1,
        "width": 32,
        "height": 32,
        "batch_size": 2,
    })
}

fn long_options() -> ServeOptions {
    ServeOptions {
        limits: Limits {
            max_steps: 1000,
            ..Limits::default()
        },
        ..ServeOptions::default()
    }
}

/// The value of an unlabelled metric line, or of one with exactly these labels.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `condition` on the progress document (bounded: 60 s).
async fn wait_for_progress(server: &TestServer, condition: impl Fn(&Value) -> bool) {
    let started = Instant::now();
    loop {
        let progress: Value = server.get("/sdapi/v1/progress").await.json().await.unwrap();
        if condition(&progress) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "progress never got there: {progress}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The images of a render request that must succeed (a request future that owns its client).
async fn rendered_images(client: reqwest::Client, url: String, request: Value) -> Vec<String> {
    let body: Value = client
        .post(url)
        .json(&request)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    images(&body)
}

fn images(body: &Value) -> Vec<String> {
    body["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1111_listing_endpoints_and_probes_answer() {
    let server = start(ServeOptions::default(), true).await;

    let loras: Value = server.get("/sdapi/v1/loras").await.json().await.unwrap();
    let names: Vec<&str> = loras
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["kohya_lora", "lokr", "peft"]);
    // The folder's layout stays private: paths are relative to it.
    assert_eq!(loras[0]["path"], "kohya_lora.safetensors");

    let models: Value = server
        .get("/sdapi/v1/sd-models")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(models.as_array().unwrap().len(), 1);
    let title = models[0]["title"].as_str().unwrap();
    assert!(title.starts_with(models[0]["model_name"].as_str().unwrap()));
    assert_eq!(models[0]["hash"].as_str().unwrap().len(), 10);

    let samplers: Value = server.get("/sdapi/v1/samplers").await.json().await.unwrap();
    let names: Vec<&str> = samplers
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "DDIM",
            "Euler",
            "Euler a",
            "DPM++ 2M",
            "DPM++ 2M Karras",
            "PLMS"
        ]
    );

    let options: Value = server.get("/sdapi/v1/options").await.json().await.unwrap();
    assert_eq!(options["sd_model_checkpoint"], title);
    assert_eq!(options["CLIP_stop_at_last_layers"], 1);

    let progress: Value = server.get("/sdapi/v1/progress").await.json().await.unwrap();
    assert_eq!(progress["progress"], 0.0);
    assert_eq!(progress["state"]["job_count"], 0);

    let interrupt: Value = server
        .post("/sdapi/v1/interrupt", &json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(interrupt["interrupted"], false);

    assert_eq!(server.get("/healthz").await.status(), StatusCode::OK);
    let ready: Value = server.get("/readyz").await.json().await.unwrap();
    assert_eq!(
        ready,
        json!({"ready": true, "renders": true, "queue_depth": 0})
    );

    let openapi: Value = server.get("/openapi.json").await.json().await.unwrap();
    for path in [
        "/sdapi/v1/txt2img",
        "/sdapi/v1/img2img",
        "/sdapi/v1/loras",
        "/sdapi/v1/sd-models",
        "/sdapi/v1/samplers",
        "/sdapi/v1/options",
        "/sdapi/v1/progress",
        "/sdapi/v1/interrupt",
        "/v1/select",
        "/v1/retrieve",
        "/metrics",
        "/healthz",
        "/readyz",
    ] {
        assert!(openapi["paths"].get(path).is_some(), "{path}");
    }

    let metrics = server.metrics().await;
    assert_eq!(metric(&metrics, "stylus_queue_depth"), Some(0.0));
    assert_eq!(metric(&metrics, "stylus_merges_total"), Some(0.0));
    assert!(
        metrics.contains("stylus_http_requests_total{route=\"/sdapi/v1/loras\",status=\"200\"} 1"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txt2img_answers_like_a1111_and_a_repeated_adapter_set_does_not_merge() {
    let server = start(ServeOptions::default(), true).await;
    let request = txt2img("a castle on a hill <lora:kohya_lora:0.9>", 11);
    let response = server.post("/sdapi/v1/txt2img", &request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let pngs = images(&body);
    assert_eq!(pngs.len(), 2);
    for b64 in &pngs {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (16, 16));
        let text = &reader.info().uncompressed_latin1_text;
        assert!(text.iter().any(|t| t.keyword == "parameters"));
    }
    assert_eq!(body["parameters"], request);
    let info: Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["seed"], 11);
    assert_eq!(info["all_seeds"], json!([11, 12]));
    assert_eq!(info["sampler_name"], "Euler a");
    assert_eq!(
        (info["steps"].clone(), info["width"].clone()),
        (json!(3), json!(16))
    );
    assert_eq!(
        info["all_prompts"][0],
        "a castle on a hill <lora:kohya_lora:0.9>"
    );
    let infotext = info["infotexts"][0].as_str().unwrap();
    assert!(infotext.starts_with("a castle on a hill <lora:kohya_lora:0.9>\nNegative prompt: blurry\nSteps: 3, Sampler: Euler a, CFG scale: 5, Seed: 11, Size: 16x16"), "{infotext}");
    assert!(
        infotext.contains("Lora hashes: \"kohya_lora: "),
        "{infotext}"
    );
    assert!(info["extra_generation_params"]["Lora hashes"].is_string());
    assert_eq!(info["stylus_plan"], Value::Null);

    let metrics = server.metrics().await;
    assert_eq!(metric(&metrics, "stylus_merges_total"), Some(1.0));
    assert_eq!(metric(&metrics, "stylus_images_total"), Some(2.0));

    // The same adapter set again: no merge, a cache hit, the same images.
    let again: Value = server
        .post("/sdapi/v1/txt2img", &request)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(images(&again), pngs);
    let metrics = server.metrics().await;
    assert_eq!(metric(&metrics, "stylus_merges_total"), Some(1.0));
    assert_eq!(metric(&metrics, "stylus_merge_cache_hits_total"), Some(1.0));
    for stage in ["queue", "render", "encode"] {
        assert!(
            metrics.contains(&format!(
                "stylus_stage_duration_seconds_count{{stage=\"{stage}\"}} 2"
            )),
            "{stage}: {metrics}"
        );
    }

    // `stylus: true` selects adapters from the catalog (the bundled one here); their files are
    // not in this server's LoRA folder, so the answer lists what to download.
    let mut selecting = txt2img("a corgi wearing a cowboy hat, watercolor", 1);
    selecting["stylus"] = json!(true);
    let missing = server.post("/sdapi/v1/txt2img", &selecting).await;
    assert_eq!(missing.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"], "MissingAdapters");
    assert!(body["detail"].as_str().unwrap().contains("corgi"), "{body}");

    // A random seed (-1) is drawn and reported.
    let random: Value = server
        .post("/sdapi/v1/txt2img", &txt2img("a castle", -1))
        .await
        .json()
        .await
        .unwrap();
    let info: Value = serde_json::from_str(random["info"].as_str().unwrap()).unwrap();
    let seed = info["seed"].as_u64().unwrap();
    assert!(seed < 4_294_967_295);
    assert_eq!(info["all_seeds"], json!([seed, seed + 1]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_get_the_images_of_a_sequential_run() {
    let server = start(ServeOptions::default(), true).await;
    let requests = [
        txt2img("a castle <lora:kohya_lora:0.9>", 11),
        txt2img("a castle <lora:lokr:1> <lora:peft:-0.7>", 11),
        txt2img("a castle", 11),
        txt2img("a castle <lora:kohya_lora:0.9>", 5),
    ];
    let mut sequential = Vec::new();
    for request in &requests {
        let body: Value = server
            .post("/sdapi/v1/txt2img", request)
            .await
            .json()
            .await
            .unwrap();
        sequential.push(images(&body));
    }
    assert_ne!(sequential[0], sequential[1]);
    assert_ne!(sequential[0], sequential[2]);
    assert_ne!(sequential[0], sequential[3]);

    // The library renders the same pixels as the server (PNG-decoded).
    let dir = tempfile::tempdir().unwrap();
    let library = library_stylus(dir.path())
        .generate(&library_request(2, 11, "euler_ancestral", None))
        .await
        .unwrap();
    assert_eq!(library.images[0].rgb, decode_png(&sequential[2][0]));

    // Every request at once, twice over: each client gets its sequential images.
    for _ in 0..2 {
        let tasks: Vec<_> = requests
            .iter()
            .cloned()
            .map(|request| {
                let client = server.client.clone();
                let url = server.url("/sdapi/v1/txt2img");
                tokio::spawn(rendered_images(client, url, request))
            })
            .collect();
        for (task, expected) in tasks.into_iter().zip(&sequential) {
            assert_eq!(&task.await.unwrap(), expected);
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_interrupt_stops_the_running_render() {
    let server = start(
        ServeOptions {
            queue_depth: 1,
            ..long_options()
        },
        true,
    )
    .await;
    let long = spawn_long_render(&server);
    wait_for_progress(&server, |p| p["state"]["sampling_step"].as_u64() > Some(0)).await;
    let progress: Value = server.get("/sdapi/v1/progress").await.json().await.unwrap();
    assert_eq!(progress["state"]["job"], "txt2img");
    // One waiting request fills the queue.
    let waiting = {
        let client = server.client.clone();
        let url = server.url("/sdapi/v1/txt2img");
        tokio::spawn(async move {
            client
                .post(url)
                .json(&txt2img("a castle", 3))
                .send()
                .await
                .unwrap()
        })
    };
    wait_for_progress(&server, |p| p["state"]["job_count"] == 2).await;
    let full = server
        .post("/sdapi/v1/txt2img", &txt2img("a castle", 4))
        .await;
    assert_eq!(full.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = full.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let body: Value = full.json().await.unwrap();
    assert_eq!(body["error"], "QueueFull");
    assert_eq!(
        metric(&server.metrics().await, "stylus_queue_depth"),
        Some(1.0)
    );

    let interrupted: Value = server
        .post("/sdapi/v1/interrupt", &json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(interrupted["interrupted"], true);
    let long = long.await.unwrap();
    assert_eq!(long.status(), StatusCode::CONFLICT);
    let body: Value = long.json().await.unwrap();
    assert_eq!(body["error"], "Interrupted");
    // The waiting request runs next, unharmed.
    let waiting = waiting.await.unwrap();
    assert_eq!(waiting.status(), StatusCode::OK);
    assert_eq!(images(&waiting.json().await.unwrap()).len(), 2);
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("stylus_renders_cancelled_total{reason=\"interrupted\"} 1"),
        "{metrics}"
    );

    // A running img2img job is reported as one.
    let mut img2img = img2img_request(&png_bytes(16, 16, false, &init_pixels()));
    img2img["steps"] = json!(1000);
    img2img["denoising_strength"] = json!(1.0);
    let long = {
        let client = server.client.clone();
        let url = server.url("/sdapi/v1/img2img");
        tokio::spawn(async move { client.post(url).json(&img2img).send().await.unwrap() })
    };
    wait_for_progress(&server, |p| p["state"]["sampling_step"].as_u64() > Some(0)).await;
    let progress: Value = server.get("/sdapi/v1/progress").await.json().await.unwrap();
    assert_eq!(progress["state"]["job"], "img2img");
    server.post("/sdapi/v1/interrupt", &json!({})).await;
    assert_eq!(long.await.unwrap().status(), StatusCode::CONFLICT);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_its_render_and_deadlines_answer_504() {
    let server = start(
        ServeOptions {
            request_timeout: Duration::from_secs(3),
            ..long_options()
        },
        true,
    )
    .await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let gone = impatient
        .post(server.url("/sdapi/v1/txt2img"))
        .json(&long_txt2img())
        .send()
        .await;
    assert!(gone.unwrap_err().is_timeout());
    // The server notices the closed connection and stops the render between steps.
    wait_for_progress(&server, |p| p["state"]["job_count"] == 0).await;
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("stylus_renders_cancelled_total{reason=\"client_gone\"} 1"),
        "{metrics}"
    );

    // A render past --request-timeout: 504, and the device is free again.
    let late = server.post("/sdapi/v1/txt2img", &long_txt2img()).await;
    assert_eq!(late.status(), StatusCode::GATEWAY_TIMEOUT);
    let body: Value = late.json().await.unwrap();
    assert_eq!(body["error"], "Timeout");
    let ok = server
        .post("/sdapi/v1/txt2img", &txt2img("a castle", 1))
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_fields_and_lora_names_are_refused_before_any_work() {
    let server = start(
        ServeOptions {
            body_limit: 4096,
            ..ServeOptions::default()
        },
        true,
    )
    .await;
    let raw = |body: &'static str| {
        server
            .client
            .post(server.url("/sdapi/v1/txt2img"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_eq!(
        raw("{not json").await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    let wrong_type = raw(r#"{"prompt": 5}"#).await.unwrap();
    assert_eq!(wrong_type.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = wrong_type.json().await.unwrap();
    assert_eq!(body["error"], "ValidationError");
    let huge = json!({ "prompt": "x".repeat(10_000) });
    assert_eq!(
        server.post("/sdapi/v1/txt2img", &huge).await.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );

    for (field, value, expected) in [
        ("steps", json!(0), "steps 0: must be in 1..=150"),
        ("steps", json!(151), "steps 151: must be in 1..=150"),
        (
            "width",
            json!(17),
            "width 17: must be a multiple of 8 in 8..=1024",
        ),
        (
            "height",
            json!(4096),
            "height 4096: must be a multiple of 8 in 8..=1024",
        ),
        ("batch_size", json!(17), "batch_size 17: must be in 1..=16"),
        ("n_iter", json!(0), "n_iter 0: must be in 1..=16"),
        ("cfg_scale", json!(99), "cfg_scale 99: must be in 0..=50"),
        ("seed", json!(-2), "seed -2: must be -1 (random)"),
        (
            "sampler_name",
            json!("Heun"),
            "sampler_name `Heun`: unknown",
        ),
        ("enable_hr", json!(true), "not supported"),
    ] {
        let mut request = txt2img("a castle", 1);
        request[field] = value;
        let response = server.post("/sdapi/v1/txt2img", &request).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{field}");
        let body: Value = response.json().await.unwrap();
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(expected), "{field}: {detail}");
    }
    let mut big = txt2img("a castle", 1);
    big["batch_size"] = json!(8);
    big["n_iter"] = json!(4);
    let response = server.post("/sdapi/v1/txt2img", &big).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    for prompt in [
        "a cat <lora:../../etc/passwd:1>",
        "a cat <lora:/etc/passwd:1>",
        "a cat <lora:..\\..\\windows\\system32:1>",
    ] {
        let response = server.post("/sdapi/v1/txt2img", &txt2img(prompt, 1)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{prompt}");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("never by a file path"),
            "{body}"
        );
    }
    let unknown = server
        .post("/sdapi/v1/txt2img", &txt2img("a cat <lora:nope:1>", 1))
        .await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    let body: Value = unknown.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("no such LoRA"));

    // Nothing was queued or rendered.
    let metrics = server.metrics().await;
    assert_eq!(metric(&metrics, "stylus_images_total"), Some(0.0));
    assert_eq!(metric(&metrics, "stylus_merges_total"), Some(0.0));
    for (path, body) in [
        ("/v1/select", json!({"prompt": ""})),
        ("/v1/select", json!({"prompt": "a cat", "batch": 0})),
        ("/v1/retrieve", json!({"prompt": "a cat", "top_k": 0})),
    ] {
        assert_eq!(
            server.post(path, &body).await.status(),
            StatusCode::BAD_REQUEST,
            "{path} {body}"
        );
    }
    assert_eq!(
        server
            .post("/v1/select", &json!({"prompt": "a cat", "bogus": 1}))
            .await
            .status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_token_is_refused_and_cors_is_off_unless_asked() {
    let server = start(
        ServeOptions {
            api_key: Some("s3cret".into()),
            ..ServeOptions::default()
        },
        false,
    )
    .await;
    let url = server.url("/sdapi/v1/loras");
    let none = server.client.get(&url).send().await.unwrap();
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    for token in ["s3cre", "s3cret!", "S3CRET", ""] {
        let wrong = server
            .client
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "{token}");
    }
    let right = server
        .client
        .get(&url)
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), StatusCode::OK);
    let select = server
        .client
        .post(server.url("/v1/select"))
        .json(&json!({"prompt": "a cat"}))
        .send()
        .await
        .unwrap();
    assert_eq!(select.status(), StatusCode::UNAUTHORIZED);
    // Basic auth is not configured here: a basic credential does not pass.
    let basic = server
        .client
        .get(&url)
        .basic_auth("s3cret", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    // Probes need no token.
    assert_eq!(server.get("/healthz").await.status(), StatusCode::OK);
    assert_eq!(server.get("/readyz").await.status(), StatusCode::OK);
    // No CORS headers unless an origin is allowed.
    let preflight = server
        .client
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert!(
        preflight
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    server.stop().await;

    let cors = start(
        ServeOptions {
            cors_origins: vec!["https://app.example".into()],
            ..ServeOptions::default()
        },
        false,
    )
    .await;
    let allowed = cors
        .client
        .get(cors.url("/healthz"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let other = cors
        .client
        .get(cors.url("/healthz"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    cors.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_and_retrieve_answer_what_the_library_does_under_200_concurrent_clients() {
    let server = start(ServeOptions::default(), false).await;
    let stylus = Stylus::open(Source::Bundled, &StylusConfig::default()).unwrap();
    let prompt = "a corgi wearing a cowboy hat, watercolor";
    let plan = stylus.select(prompt).await.unwrap();
    let body: Value = server
        .post("/v1/select", &json!({ "prompt": prompt }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["a1111_prompt"], plan.a1111_prompt);
    assert_eq!(body["topics"], serde_json::to_value(&plan.topics).unwrap());
    assert!(body["timings_ms"]["open"].is_number());

    let candidates = stylus.retrieve(prompt).await.unwrap();
    let ranked: Value = server
        .post("/v1/retrieve", &json!({ "prompt": prompt, "top_k": 5 }))
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<String> = ranked["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["id"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| r["id"].to_string())
        })
        .collect();
    let expected: Vec<String> = candidates[..5]
        .iter()
        .map(|c| {
            let id = serde_json::to_value(c.doc.id()).unwrap();
            id.as_str()
                .map(String::from)
                .unwrap_or_else(|| id.to_string())
        })
        .collect();
    assert_eq!(ids, expected);

    // Without a checkpoint, rendering is refused plainly.
    let no_model = server
        .post("/sdapi/v1/txt2img", &txt2img("a castle", 1))
        .await;
    assert_eq!(no_model.status(), StatusCode::SERVICE_UNAVAILABLE);

    // 200 clients at once: every one answered, each with its own prompt's plan.
    let prompts = [
        "a corgi wearing a cowboy hat, watercolor",
        "portrait of an old fisherman, oil painting",
        "a cyberpunk city at night, neon, rain",
        "a castle on a hill at golden hour",
    ];
    let expected: Vec<String> = {
        let mut out = Vec::new();
        for p in prompts {
            out.push(stylus.select(p).await.unwrap().a1111_prompt);
        }
        out
    };
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let client = server.client.clone();
            let url = server.url("/v1/select");
            let prompt = prompts[i % prompts.len()];
            tokio::spawn(async move {
                let response = client
                    .post(url)
                    .json(&json!({ "prompt": prompt }))
                    .send()
                    .await
                    .unwrap();
                (response.status(), response.json::<Value>().await.unwrap())
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["a1111_prompt"], expected[i % prompts.len()]);
    }
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("stylus_http_requests_total{route=\"/v1/select\",status=\"200\"} 201"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_running_renders_within_the_grace_and_cancels_after_it() {
    // A generous grace: the running render finishes and is answered whole.
    let server = start(ServeOptions::default(), true).await;
    let running = {
        let client = server.client.clone();
        let url = server.url("/sdapi/v1/txt2img");
        let mut request = txt2img("a castle", 2);
        request["steps"] = json!(40);
        tokio::spawn(async move { client.post(url).json(&request).send().await.unwrap() })
    };
    // Started (on a fast machine it may also have finished: then shutdown has nothing to wait for).
    wait_for_progress(&server, |p| p["state"]["job_no"].as_u64() >= Some(1)).await;
    let addr = server.addr;
    server.stop().await;
    let finished = running.await.unwrap();
    assert_eq!(finished.status(), StatusCode::OK);
    assert_eq!(images(&finished.json().await.unwrap()).len(), 2);
    // The port is closed.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());

    // A short grace: the long render is cancelled and answered 503, not cut off.
    let server = start(
        ServeOptions {
            shutdown_grace: Duration::from_millis(200),
            ..long_options()
        },
        true,
    )
    .await;
    let long = spawn_long_render(&server);
    wait_for_progress(&server, |p| p["state"]["sampling_step"].as_u64() > Some(0)).await;
    server.stop().await;
    let cancelled = long.await.unwrap();
    assert_eq!(cancelled.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = cancelled.json().await.unwrap();
    assert_eq!(body["error"], "ShuttingDown");
}

// ---- img2img ----

/// An 8-bit PNG in memory (`grey`: one channel, else RGB).
fn png_bytes(width: u32, height: u32, grey: bool, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(if grey {
        png::ColorType::Grayscale
    } else {
        png::ColorType::Rgb
    });
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(data).unwrap();
    writer.finish().unwrap();
    out
}

/// A 16x16 RGB gradient (the init image of the img2img tests).
fn init_pixels() -> Vec<u8> {
    (0..16 * 16)
        .flat_map(|i: u32| [(i % 16 * 16) as u8, (i / 16 * 16) as u8, 128])
        .collect()
}

/// A 16x16 mask: the right half white (repaint).
fn right_half_mask() -> Vec<u8> {
    (0..16 * 16)
        .map(|i: u32| if i % 16 >= 8 { 255 } else { 0 })
        .collect()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The library side of the parity tests: the bundled catalog with the tiny fixture checkpoint
/// (written into `dir`), as the test servers load it.
fn library_stylus(dir: &Path) -> Stylus {
    let checkpoint =
        common::full_vocab::full_vocab_checkpoint(&fixture("sd/tiny-ldm.safetensors"), dir);
    let loaded = stylus::render::load_sampler(&checkpoint, Device::Cpu, None).unwrap();
    Stylus::options()
        .sampler(loaded.sampler)
        .open(Source::Bundled, &StylusConfig::default())
        .unwrap()
}

/// The request the parity tests send to the server, for the library: "a castle", 3 steps at CFG
/// 5, 16x16, no selection.
fn library_request(
    batch: usize,
    seed: u64,
    sampler: &str,
    init_image: Option<stylus::InitImage>,
) -> stylus::GenerationRequest {
    stylus::GenerationRequest {
        prompt: "a castle".into(),
        negative_prompt: "blurry".into(),
        batch,
        seed,
        sampling: stylus_core::SamplingParams {
            steps: 3,
            guidance_scale: 5.0,
            sampler: sampler.into(),
            width: 16,
            height: 16,
            clip_skip: 1,
        },
        select: false,
        explicit_loras: vec![],
        init_latents: None,
        keep_latents: false,
        init_image,
    }
}

fn decode_png(b64_png: &str) -> Vec<u8> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64_png)
        .unwrap();
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut pixels).unwrap();
    pixels
}

fn img2img_request(init: &[u8]) -> Value {
    let mut request = txt2img("a castle", 7);
    request["batch_size"] = json!(1);
    request["sampler_name"] = json!("Euler");
    request["init_images"] = json!([format!("data:image/png;base64,{}", b64(init))]);
    request["denoising_strength"] = json!(0.6);
    request["resize_mode"] = json!(1);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn img2img_and_inpainting_render_what_the_library_renders_from_the_same_files() {
    let server = start(ServeOptions::default(), true).await;
    let init = png_bytes(16, 16, false, &init_pixels());
    let mask = png_bytes(16, 16, true, &right_half_mask());

    let request = img2img_request(&init);
    let response = server.post("/sdapi/v1/img2img", &request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let plain = images(&body);
    assert_eq!(plain.len(), 1);
    let info: Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["denoising_strength"], json!(0.6));
    assert_eq!(info["seed"], 7);
    let infotext = info["infotexts"][0].as_str().unwrap();
    assert!(infotext.contains("Denoising strength: 0.6"), "{infotext}");
    // The uploads are not echoed back (A1111's default).
    assert_eq!(body["parameters"]["init_images"], Value::Null);
    assert_eq!(body["parameters"]["denoising_strength"], json!(0.6));

    // Inpainting the right half (no blur): the left half keeps the init image's pixels.
    let mut inpaint = img2img_request(&init);
    inpaint["mask"] = json!(b64(&mask));
    inpaint["mask_blur"] = json!(0);
    inpaint["inpainting_fill"] = json!(1);
    inpaint["inpaint_full_res"] = json!(false);
    let body: Value = server
        .post("/sdapi/v1/img2img", &inpaint)
        .await
        .json()
        .await
        .unwrap();
    let inpainted = decode_png(&images(&body)[0]);
    let info: Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["extra_generation_params"]["Mask blur"], 0);
    let original = init_pixels();
    let column = |pixels: &[u8], x: usize| -> Vec<u8> {
        (0..16)
            .flat_map(|y| pixels[(y * 16 + x) * 3..(y * 16 + x) * 3 + 3].to_vec())
            .collect()
    };
    for x in 0..8 {
        assert_eq!(column(&inpainted, x), column(&original, x), "column {x}");
    }
    assert_ne!(column(&inpainted, 12), column(&original, 12));
    // Inverted: the right half is kept instead.
    inpaint["inpainting_mask_invert"] = json!(1);
    let body: Value = server
        .post("/sdapi/v1/img2img", &inpaint)
        .await
        .json()
        .await
        .unwrap();
    let inverted = decode_png(&images(&body)[0]);
    for x in 8..16 {
        assert_eq!(column(&inverted, x), column(&original, x), "column {x}");
    }

    // The library (as `stylus generate --init-image FILE` runs it) renders the same pixels.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("init.png"), &init).unwrap();
    std::fs::write(dir.path().join("mask.png"), &mask).unwrap();
    let stylus = library_stylus(dir.path());
    let mut init_image = stylus::InitImage::new(dir.path().join("init.png"));
    init_image.strength = 0.6;
    init_image.resize_mode = stylus::ResizeMode::Fill;
    let mut library_request = library_request(1, 7, "euler", Some(init_image.clone()));
    let library = stylus.generate(&library_request).await.unwrap();
    assert_eq!(library.images[0].rgb, decode_png(&plain[0]));
    init_image.mask = Some(stylus::InpaintMask::new(dir.path().join("mask.png")));
    library_request.init_image = Some(init_image);
    let library = stylus.generate(&library_request).await.unwrap();
    assert_eq!(library.images[0].rgb, inpainted);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_and_unsupported_img2img_fields_are_400s_naming_the_field() {
    let server = start(
        ServeOptions {
            limits: Limits {
                max_image_pixels: 32 * 32,
                ..Limits::default()
            },
            image_body_limit: 64 << 10,
            ..ServeOptions::default()
        },
        true,
    )
    .await;
    let init = png_bytes(16, 16, false, &init_pixels());
    let big = png_bytes(64, 64, true, &[9; 64 * 64]);
    let small_mask = png_bytes(8, 8, true, &[255; 64]);
    let mask = b64(&png_bytes(16, 16, true, &right_half_mask()));
    let with = |field: &str, value: Value| {
        let mut request = img2img_request(&init);
        request["mask"] = json!(mask);
        request["inpainting_fill"] = json!(1);
        request[field] = value;
        request
    };
    for (request, expected) in [
        (
            with("init_images", json!(["%%% not base64"])),
            "init_images[0]: not valid base64",
        ),
        (
            with(
                "init_images",
                json!([b64(b"GIF89a, or rather not an image at all")]),
            ),
            "init_images[0]: not a PNG or JPEG",
        ),
        (
            with("init_images", json!([b64(&big)])),
            "init_images[0]: 64x64 pixels; this server accepts at most 1024",
        ),
        (with("init_images", json!([])), "init_images: no image"),
        (
            with("mask", json!(b64(&small_mask))),
            "mask: 8x8 pixels but init_images[0] is 16x16",
        ),
        (
            with("mask", json!("data:image/png;base64,@@")),
            "mask: not valid base64",
        ),
        (
            with("resize_mode", json!(3)),
            "resize_mode 3 (latent upscale)",
        ),
        (
            with("inpainting_fill", json!(0)),
            "inpainting_fill 0 (fill)",
        ),
        (
            with("inpaint_full_res", json!(true)),
            "inpaint_full_res true",
        ),
        (
            with("mask_blur_x", json!(2)),
            "mask_blur_x 2 and mask_blur_y 4",
        ),
        (
            with("denoising_strength", json!(1.5)),
            "denoising_strength 1.5: must be in 0..=1",
        ),
        (with("steps", json!(0)), "steps 0: must be in 1..=150"),
    ] {
        let response = server.post("/sdapi/v1/img2img", &request).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{expected}");
        let body: Value = response.json().await.unwrap();
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(expected), "{expected}: {detail}");
    }
    // A body over --image-body-limit is refused unread.
    let huge = with("prompt", json!("x".repeat(100 << 10)));
    assert_eq!(
        server.post("/sdapi/v1/img2img", &huge).await.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let metrics = server.metrics().await;
    assert_eq!(metric(&metrics, "stylus_images_total"), Some(0.0));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_as_a1111_api_auth_lets_any_listed_credential_or_the_token_through() {
    let server = start(
        ServeOptions {
            api_key: Some("t0ken".into()),
            api_auth: stylus::serve::auth::parse_api_auth("ann:pa:ss,bob:hunter2").unwrap(),
            ..ServeOptions::default()
        },
        false,
    )
    .await;
    let get = |user: &str, password: &str| {
        server
            .client
            .get(server.url("/sdapi/v1/loras"))
            .basic_auth(user, Some(password))
            .send()
    };
    assert_eq!(get("ann", "pa:ss").await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        get("bob", "hunter2").await.unwrap().status(),
        StatusCode::OK
    );
    for (user, password) in [
        ("bob", "pa:ss"),
        ("ann", "pa:sS"),
        ("eve", "hunter2"),
        ("bob", ""),
    ] {
        let wrong = get(user, password).await.unwrap();
        assert_eq!(
            wrong.status(),
            StatusCode::UNAUTHORIZED,
            "{user}:{password}"
        );
        let challenges: Vec<_> = wrong
            .headers()
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(challenges, ["Bearer", "Basic realm=\"stylus\""]);
    }
    // img2img sits behind the same check.
    let img2img = server
        .client
        .post(server.url("/sdapi/v1/img2img"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(img2img.status(), StatusCode::UNAUTHORIZED);
    let token = server
        .client
        .get(server.url("/sdapi/v1/loras"))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), StatusCode::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_options_set_the_default_clip_skip_and_refuse_another_model() {
    let server = start(ServeOptions::default(), true).await;
    let options: Value = server.get("/sdapi/v1/options").await.json().await.unwrap();
    let title = options["sd_model_checkpoint"].as_str().unwrap().to_string();
    let render = |override_skip: Option<i64>| {
        let mut request = txt2img("a castle", 3);
        if let Some(skip) = override_skip {
            request["override_settings"] = json!({ "CLIP_stop_at_last_layers": skip });
        }
        let client = server.client.clone();
        let url = server.url("/sdapi/v1/txt2img");
        rendered_images(client, url, request)
    };
    let skip1 = render(Some(1)).await;
    let skip2 = render(Some(2)).await;
    assert_ne!(skip1, skip2);
    assert_eq!(render(None).await, skip1);

    // The loaded model (a no-op), clip skip 2, and a key this server does not know (ignored).
    let set = server
        .post(
            "/sdapi/v1/options",
            &json!({"sd_model_checkpoint": title, "CLIP_stop_at_last_layers": 2, "sd_vae": "Automatic"}),
        )
        .await;
    assert_eq!(set.status(), StatusCode::OK);
    assert_eq!(set.json::<Value>().await.unwrap(), Value::Null);
    let options: Value = server.get("/sdapi/v1/options").await.json().await.unwrap();
    assert_eq!(options["CLIP_stop_at_last_layers"], 2);
    assert_eq!(render(None).await, skip2);

    // Another model, or a bad clip skip: 400 naming it, and nothing changes.
    for (body, expected) in [
        (
            json!({"CLIP_stop_at_last_layers": 1, "sd_model_checkpoint": "sd_xl_base_1.0 [31e35c80fc]"}),
            "sd_model_checkpoint `sd_xl_base_1.0 [31e35c80fc]`",
        ),
        (
            json!({"CLIP_stop_at_last_layers": 12}),
            "CLIP_stop_at_last_layers 12",
        ),
        (
            json!(["not", "an", "object"]),
            "options: expected a JSON object",
        ),
    ] {
        let refused = server.post("/sdapi/v1/options", &body).await;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{expected}");
        let detail: Value = refused.json().await.unwrap();
        assert!(
            detail["detail"].as_str().unwrap().contains(expected),
            "{detail}"
        );
    }
    let options: Value = server.get("/sdapi/v1/options").await.json().await.unwrap();
    assert_eq!(options["CLIP_stop_at_last_layers"], 2);
    server.stop().await;
}
