//! `stylus serve`: the pipeline as an HTTP service (A1111 API subset + Stylus endpoints); the
//! server itself is `stylus::serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use stylus::render::Device;
use stylus::serve::{Limits, ServeOptions, Server, Setup};
use stylus_core::{StylusConfig, StylusError};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// SD 1.5 checkpoint (diffusers folder, single-file .safetensors, or a Hugging Face hub repo
    /// `hf:org/name[@revision]` found in or downloaded into the hub cache); without it only the
    /// selection endpoints answer.
    #[arg(long, value_name = "PATH|hf:REPO")]
    pub checkpoint: Option<PathBuf>,
    /// Hub checkpoints: fetch the `.fp16.safetensors` weights (half the download; run in f32).
    #[arg(long)]
    pub fp16_variant: bool,
    /// Hub checkpoints come from the hub cache only (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// StylusDocs store directory (default: the bundled catalog).
    #[arg(long, value_name = "DIR")]
    pub index: Option<PathBuf>,
    /// Folder with the LoRA files requests may name and selection renders with.
    #[arg(long, value_name = "DIR")]
    pub lora_dir: Option<PathBuf>,
    /// Compute device (GPU ones need the matching build feature).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Address to listen on. The default is loopback only: put a reverse proxy (TLS, auth) in
    /// front before binding a public address.
    #[arg(long, default_value = "127.0.0.1:7860")]
    pub bind: SocketAddr,
    /// Bearer token every request but /healthz and /readyz must carry.
    #[arg(long, env = "STYLUS_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// A1111's basic auth: USER:PASSWORD[,USER2:PASSWORD2] (what clients such as webuiapi
    /// send); any credential, or the --api-key token, lets a request through.
    #[arg(
        long,
        env = "STYLUS_API_AUTH",
        hide_env_values = true,
        value_name = "USER:PASS,..."
    )]
    pub api_auth: Option<String>,
    /// Allow browser calls from this origin (repeatable, e.g. https://app.example); no CORS
    /// headers without it.
    #[arg(long, value_name = "ORIGIN")]
    pub cors_origin: Vec<String>,
    /// Render requests that may wait besides the running one; more get 429.
    #[arg(long, default_value_t = 16)]
    pub queue_depth: usize,
    /// Seconds one render request may take, waiting included (then 504).
    #[arg(long, default_value_t = 600.0)]
    pub request_timeout: f64,
    /// Seconds running and queued renders may still finish after ctrl-c before they are
    /// cancelled.
    #[arg(long, default_value_t = 30.0)]
    pub shutdown_grace: f64,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = ServeOptions::default().body_limit)]
    pub body_limit: usize,
    /// Largest img2img request body in bytes (base64 init image and mask).
    #[arg(long, default_value_t = ServeOptions::default().image_body_limit)]
    pub image_body_limit: usize,
    /// Most pixels of an uploaded init image or mask (read from its header before decoding).
    #[arg(long, default_value_t = Limits::default().max_image_pixels)]
    pub max_image_pixels: u64,
    /// MiB of merged adapter sets kept so a repeated set is not merged again.
    #[arg(long, default_value_t = 1024)]
    pub merge_cache_mib: usize,
    /// Most sampling steps a request may ask for.
    #[arg(long, default_value_t = Limits::default().max_steps)]
    pub max_steps: usize,
    /// Largest width or height in pixels.
    #[arg(long, default_value_t = Limits::default().max_side)]
    pub max_side: u32,
    /// Most images per request (batch_size x n_iter).
    #[arg(long, default_value_t = Limits::default().max_images)]
    pub max_images: usize,
}

fn seconds(flag: &str, value: f64) -> Result<Duration, StylusError> {
    if value.is_finite() && value > 0.0 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(StylusError::InvalidArgument(format!(
            "{flag} {value}: must be a positive number of seconds"
        )))
    }
}

pub fn run(args: Args, config: &StylusConfig) -> Result<(), StylusError> {
    let options = ServeOptions {
        limits: Limits {
            max_steps: args.max_steps,
            max_side: args.max_side,
            max_images: args.max_images,
            max_image_pixels: args.max_image_pixels,
            ..Limits::default()
        },
        queue_depth: args.queue_depth,
        request_timeout: seconds("--request-timeout", args.request_timeout)?,
        shutdown_grace: seconds("--shutdown-grace", args.shutdown_grace)?,
        api_key: args.api_key.filter(|k| !k.is_empty()),
        api_auth: match &args.api_auth {
            Some(value) => stylus::serve::auth::parse_api_auth(value)?,
            None => Vec::new(),
        },
        cors_origins: args.cors_origin,
        body_limit: args.body_limit,
        image_body_limit: args.image_body_limit,
        merge_cache_bytes: args.merge_cache_mib.saturating_mul(1 << 20),
    };
    if !args.bind.ip().is_loopback() && options.api_key.is_none() && options.api_auth.is_empty() {
        tracing::warn!(
            bind = %args.bind,
            "listening beyond loopback without --api-key or --api-auth: anyone who reaches this address can render"
        );
    }
    let checkpoint = match &args.checkpoint {
        Some(arg) => Some(match super::hub_checkpoint(arg)? {
            Some(hub) => super::resolve_hub_checkpoint(&hub, args.offline, args.fp16_variant)?,
            None => arg.clone(),
        }),
        None => None,
    };
    let setup = Setup {
        config: config.clone(),
        index: args.index,
        checkpoint,
        device: args.device,
        lora_dir: args.lora_dir,
    };
    // Everything is loaded before the port opens: a client never sees a half-started server.
    let server = Server::build(setup, options)?;
    let bind = args.bind;
    super::runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|e| StylusError::io(format!("--bind {bind}"), e))?;
        eprintln!("stylus serve: listening on http://{bind}");
        server
            .serve(listener, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
    })
}
