//! `stylus serve`: the pipeline as a long-running HTTP service (feature `serve`).
//!
//! One process opens the catalog and loads the checkpoint once and keeps both warm. It speaks the
//! subset of the AUTOMATIC1111 WebUI API that SD clients use ([`routes_a1111`]) and Stylus' own
//! endpoints ([`routes_stylus`]). Renders go through one [`queue::RenderQueue`] that owns the
//! device: bounded, first in first out, cancellable, with deadlines. Selection requests do not
//! queue: they are milliseconds of CPU work and run on the runtime's workers (through
//! `run_cpu`).
//!
//! ```no_run
//! # async fn run() -> stylus::Result<()> {
//! use stylus::serve::{Server, ServeOptions, Setup};
//! let server = Server::build(Setup::bundled(stylus::StylusConfig::default()), ServeOptions::default())?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7860").await.unwrap();
//! server.serve(listener, async { tokio::signal::ctrl_c().await.ok(); }).await
//! # }
//! ```

pub mod auth;
pub mod error;
pub mod img2img;
pub mod loras;
pub mod metrics;
pub mod openapi;
pub mod queue;
pub mod routes_a1111;
pub mod routes_stylus;
pub mod settings;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, header};
use stylus_core::{Result, StylusConfig, StylusError};
use stylus_refiner::locator::FolderLocator;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;

use crate::render::{Device, RenderOptions, load_sampler_with};
use crate::{Source, Stylus};
use loras::LoraRegistry;
use metrics::Metrics;
use queue::{RenderQueue, RenderStatus};

/// What requests may ask for; every value outside is refused before any work, with the range
/// in the message.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Sampling steps per request.
    pub max_steps: usize,
    /// Width and height in pixels (multiples of 8, at least 8).
    pub max_side: u32,
    /// Images per request (`batch_size * n_iter`).
    pub max_images: usize,
    /// Characters of a prompt or negative prompt.
    pub max_prompt_chars: usize,
    /// `top_k` of `/v1/retrieve`.
    pub max_top_k: usize,
    /// Pixels of an uploaded image (img2img init image, mask), read from its header before it
    /// is decoded.
    pub max_image_pixels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_steps: 150,
            max_side: 1024,
            max_images: 16,
            max_prompt_chars: 4000,
            max_top_k: 1000,
            max_image_pixels: 2048 * 2048,
        }
    }
}

/// How the server runs (the `stylus serve` flags).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub limits: Limits,
    /// Render requests waiting besides the one running; a full queue answers 429.
    pub queue_depth: usize,
    /// How long one render request may take, waiting in the queue included (then 504).
    pub request_timeout: Duration,
    /// After a shutdown signal: how long running and queued renders may still finish before
    /// they are cancelled (each still gets a whole answer).
    pub shutdown_grace: Duration,
    /// Bearer token every request but `/healthz` and `/readyz` must carry (or a basic
    /// credential of `api_auth`).
    pub api_key: Option<String>,
    /// A1111's `--api-auth`: basic-auth credentials, any of which lets a request through (as
    /// does the bearer token).
    pub api_auth: Vec<auth::BasicCredential>,
    /// Origins allowed by CORS; empty: no CORS headers (browsers refuse cross-origin calls).
    pub cors_origins: Vec<String>,
    /// Bytes of a request body.
    pub body_limit: usize,
    /// Bytes of an img2img request body (base64 images are large).
    pub image_body_limit: usize,
    /// Bytes of merged adapter sets kept for reuse besides the active one.
    pub merge_cache_bytes: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            queue_depth: 16,
            request_timeout: Duration::from_secs(600),
            shutdown_grace: Duration::from_secs(30),
            api_key: None,
            api_auth: Vec::new(),
            cors_origins: Vec::new(),
            body_limit: 1 << 20,
            image_body_limit: 32 << 20,
            merge_cache_bytes: 1 << 30,
        }
    }
}

/// What the server opens: the catalog, and (for rendering) a checkpoint and a LoRA folder.
#[derive(Debug, Clone)]
pub struct Setup {
    pub config: StylusConfig,
    /// A StylusDocs store (`None`: the bundled catalog).
    pub index: Option<PathBuf>,
    /// An SD 1.5 checkpoint; without one only selection endpoints answer (txt2img: 503).
    pub checkpoint: Option<PathBuf>,
    pub device: Device,
    /// The LoRA files requests may name (by file stem, or by catalog id/alias) and selection
    /// renders with.
    pub lora_dir: Option<PathBuf>,
}

impl Setup {
    /// The bundled catalog, no checkpoint (selection only).
    pub fn bundled(config: StylusConfig) -> Self {
        Self {
            config,
            index: None,
            checkpoint: None,
            device: Device::Cpu,
            lora_dir: None,
        }
    }
}

/// The loaded checkpoint as clients see it.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// File stem (A1111's `model_name`).
    pub name: String,
    pub path: PathBuf,
    /// A1111's short hash (10 hex digits) of a single-file checkpoint.
    pub hash: Option<String>,
}

impl ModelInfo {
    /// A1111's title: `name [hash]`.
    pub fn title(&self) -> String {
        match &self.hash {
            Some(hash) => format!("{} [{hash}]", self.name),
            None => self.name.clone(),
        }
    }
}

/// What every handler shares: the pipeline, the model, the LoRA folder, the queue, the metrics.
pub struct Inner {
    pub stylus: Stylus,
    pub model: Option<ModelInfo>,
    pub loras: LoraRegistry,
    /// Finds catalog adapters' files in `--lora-dir` (tags naming a catalog id or alias).
    pub locator: Option<Arc<FolderLocator>>,
    pub queue: RenderQueue,
    pub metrics: Metrics,
    pub options: ServeOptions,
    /// What `POST /sdapi/v1/options` changed.
    pub settings: settings::Settings,
    pub draining: AtomicBool,
}

/// The shared state of every handler.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Inner>);

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("model", &self.model)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// A built server: the catalog open, the model loaded, ready to serve.
#[derive(Debug)]
pub struct Server {
    state: AppState,
    worker: queue::Worker,
}

impl Server {
    /// Opens the catalog, loads the checkpoint (seconds to minutes) and lists the LoRA folder.
    /// Blocking: call it before the runtime serves, or through `spawn_blocking`.
    pub fn build(setup: Setup, options: ServeOptions) -> Result<Self> {
        if options.queue_depth == 0 {
            return Err(StylusError::InvalidArgument(
                "--queue-depth must be at least 1".into(),
            ));
        }
        for origin in &options.cors_origins {
            let scheme = origin.starts_with("http://") || origin.starts_with("https://");
            if !scheme || HeaderValue::from_str(origin).is_err() || origin.ends_with('/') {
                return Err(StylusError::InvalidArgument(format!(
                    "--cors-origin {origin}: expected an origin such as https://app.example"
                )));
            }
        }
        let status = Arc::new(RenderStatus::default());
        let loras = LoraRegistry::scan(setup.lora_dir.as_deref())?;
        // The catalog opens before the checkpoint loads: a bad store fails fast.
        let catalog = crate::catalog::open(setup.index.as_deref(), &setup.config, false)?;
        let mut open = Stylus::options();
        let mut merge_stats = None;
        let model = match &setup.checkpoint {
            Some(checkpoint) => {
                if !checkpoint.exists() {
                    return Err(StylusError::InvalidArgument(format!(
                        "--checkpoint {}: no such file or directory",
                        checkpoint.display()
                    )));
                }
                let loaded = load_sampler_with(
                    checkpoint,
                    setup.device,
                    RenderOptions {
                        progress: Some(status.progress_fn()),
                        interrupt: Some(status.interrupt_fn()),
                        merge_cache_bytes: options.merge_cache_bytes,
                    },
                )?;
                open = open.sampler(loaded.sampler);
                merge_stats = Some(loaded.merge_stats);
                let hash = checkpoint
                    .is_file()
                    .then(|| stylus_diffusion::png::model_short_hash(checkpoint))
                    .transpose()?;
                Some(ModelInfo {
                    name: checkpoint
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    path: checkpoint.clone(),
                    hash,
                })
            }
            None => None,
        };
        let locator = match &setup.lora_dir {
            Some(dir) => Some(Arc::new(FolderLocator::new(dir)?)),
            None => None,
        };
        if let Some(locator) = &locator {
            open = open.locator(locator.clone());
        }
        let stylus = open.open(Source::Catalog(catalog), &setup.config)?;
        let settings = settings::Settings::new(setup.config.sampling.clip_skip);
        let (queue, worker) = RenderQueue::new(options.queue_depth, status);
        let state = AppState(Arc::new(Inner {
            stylus,
            model,
            loras,
            locator,
            queue,
            metrics: Metrics::new(merge_stats),
            options,
            settings,
            draining: AtomicBool::new(false),
        }));
        Ok(Self { state, worker })
    }

    /// The handlers' shared state.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Every route with its layers (auth, body limit, CORS, metrics).
    pub fn router(&self) -> Router {
        router(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` completes, then stops accepting, lets running and
    /// queued renders finish for [`ServeOptions::shutdown_grace`], cancels what is left (each
    /// request still gets a whole answer) and returns once every connection is answered.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let state = self.state.clone();
        let worker = tokio::spawn(self.worker.run(state.clone()));
        let app = router(state.clone());
        let grace = state.options.shutdown_grace;
        let draining = state.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: no new requests; finishing running renders");
            draining.draining.store(true, Ordering::SeqCst);
            let cancel = draining.clone();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                cancel.queue.cancel_all("the server is shutting down");
            });
        };
        let address = listener.local_addr().ok();
        tracing::info!(?address, "listening");
        axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .await
            .map_err(|e| StylusError::io("<http server>", e))?;
        state.queue.close();
        worker.abort();
        Ok(())
    }
}

/// The application: routes, then the layers every request passes (outermost last).
pub fn router(state: AppState) -> Router {
    let auth = || axum::middleware::from_fn_with_state(state.clone(), auth::require_api_key);
    // The tower-http limit refuses a body over the limit (413) by its Content-Length before it
    // is read, and a chunked one as soon as it passes the limit. img2img carries base64 images
    // and gets its own, larger limit.
    let images = Router::new()
        .route("/sdapi/v1/img2img", axum::routing::post(img2img::img2img))
        .route_layer(auth())
        .layer(RequestBodyLimitLayer::new(state.options.image_body_limit));
    let mut app = Router::new()
        .merge(routes_a1111::routes())
        .merge(routes_stylus::routes())
        .route_layer(auth())
        .merge(routes_stylus::open_routes())
        .layer(RequestBodyLimitLayer::new(state.options.body_limit))
        .merge(images)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::disable());
    if !state.options.cors_origins.is_empty() {
        let origins: Vec<HeaderValue> = state
            .options
            .cors_origins
            .iter()
            // Checked in `Server::build`.
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        app = app.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION]),
        );
    }
    app.with_state(state)
}
