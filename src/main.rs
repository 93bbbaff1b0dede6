//! `stylus`: pick LoRA adapters for a prompt and generate images with Stable Diffusion 1.5.
//!
//! The CLI is thin: argument parsing and output formatting. Each subcommand lives in its own
//! module under `commands/`. Results go to stdout, logs (tracing) to stderr.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stylus_core::{StylusConfig, StylusError};

/// Stylus: automatic LoRA selection and composition for Stable Diffusion 1.5.
///
/// Give it a prompt; it finds matching adapters in a catalog of Civitai LoRAs, splits the prompt
/// into topics, assigns adapters to them and renders images with the adapters merged in.
#[derive(Debug, Parser)]
#[command(
    name = "stylus",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    /// Configuration file (TOML); defaults: top-K 150, <= 3 adapters per prompt (3 per topic), ...
    #[arg(long, global = true, value_name = "FILE", env = "STYLUS_CONFIG")]
    config: Option<PathBuf>,

    /// More log output on stderr (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Network clients (LLM composer, VLM refiner, OpenAI embedder, Civitai fetch): seconds one
    /// HTTP request may take. Env: STYLUS_TIMEOUT (or STYLUS_LLM_TIMEOUT, ...); config:
    /// [network] timeout_secs.
    #[arg(long, global = true, value_name = "SECS", value_parser = positive_seconds)]
    timeout: Option<f64>,

    /// Network clients: retries of a failed request (0..=100). Env: STYLUS_RETRIES (or
    /// STYLUS_LLM_RETRIES, ...); config: [network] retries.
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=100))]
    retries: Option<u32>,

    /// Network clients: seconds one call may take over all its attempts. Env: STYLUS_DEADLINE
    /// (or STYLUS_LLM_DEADLINE, ...); config: [network] deadline_secs.
    #[arg(long, global = true, value_name = "SECS", value_parser = positive_seconds)]
    deadline: Option<f64>,

    /// Chat models (LLM composer, VLM refiner): times one question is asked while the replies
    /// are unusable, re-asking with the problem (1..=20, default 3). Env: STYLUS_REPLY_ATTEMPTS
    /// (or STYLUS_LLM_REPLY_ATTEMPTS, ...); config: [network] reply_attempts.
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=20))]
    reply_attempts: Option<u32>,

    #[command(subcommand)]
    command: Command,
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{text}` is not a positive number of seconds")),
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a StylusDocs index from Civitai model JSON and/or a folder of LoRA files.
    Index(commands::index::Args),
    /// Print the top-K adapters for prompts (embedding search only, no composition).
    Retrieve(commands::retrieve::Args),
    /// Choose adapters for a prompt: topics, adapters, weights, masks and an A1111 prompt.
    Select(commands::select::Args),
    /// Select adapters, merge them into SD 1.5 and render PNG images.
    Generate(commands::generate::Args),
    /// Bake weighted LoRAs into a checkpoint (like kohya's merge_lora).
    Merge(commands::merge::Args),
    /// Explain a LoRA or checkpoint file: format, base model, modules, metadata.
    Info(commands::info::Args),
    /// Evaluate retrieval quality or prompt segmentation on a development set.
    Eval(commands::eval::Args),
    /// Time the SD 1.5 stack on a device (driven by benches/gpu/bench.py).
    Bench(commands::bench::Args),
    /// Download the adapters of a plan (or ids/URLs) into the verified adapter cache.
    Fetch(commands::fetch::Args),
    /// The adapter cache: list, prune (evict to the size limit), verify (re-hash).
    Cache(commands::cache::Args),
    /// Serve the pipeline over HTTP: the AUTOMATIC1111 API subset and Stylus' endpoints.
    Serve(commands::serve::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    quiet_on_closed_stdout();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli)));
    let outcome = match outcome {
        Ok(outcome) => outcome,
        // `println!` on a closed stdout (`stylus info f | head`): the reader's choice.
        Err(payload) if is_closed_stdout(payload.as_ref()) => return ExitCode::SUCCESS,
        Err(payload) => std::panic::resume_unwind(payload),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        // A closed stdout (`stylus select ... | head`) is the reader's choice, not a failure.
        Err(StylusError::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code() as u8)
        }
    }
}

/// Whether a panic payload is `println!`'s "failed printing to stdout: Broken pipe".
fn is_closed_stdout(payload: &(dyn std::any::Any + Send)) -> bool {
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("");
    message.starts_with("failed printing to stdout") && message.contains("Broken pipe")
}

/// Keeps the panic hook from printing a backtrace for a closed stdout (see `main`).
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_closed_stdout(info.payload()) {
            default(info);
        }
    }));
}

fn run(cli: Cli) -> Result<(), StylusError> {
    let config = match &cli.config {
        Some(path) => StylusConfig::from_toml_file(path)?,
        None => StylusConfig::default(),
    };
    commands::set_network_flags(stylus_core::NetworkConfig {
        timeout_secs: cli.timeout,
        retries: cli.retries,
        deadline_secs: cli.deadline,
        reply_attempts: cli.reply_attempts,
    });
    match cli.command {
        Command::Index(args) => commands::index::run(args, &config),
        Command::Retrieve(args) => commands::retrieve::run(args, &config),
        Command::Select(args) => commands::select::run(args, &config),
        Command::Generate(args) => commands::generate::run(args, &config),
        Command::Merge(args) => commands::merge::run(args, &config),
        Command::Info(args) => commands::info::run(args, &config),
        Command::Eval(args) => commands::eval::run(args, &config),
        Command::Bench(args) => commands::bench::run(args, &config),
        Command::Fetch(args) => commands::fetch::run(args, &config),
        Command::Cache(args) => commands::cache::run(args, &config),
        Command::Serve(args) => commands::serve::run(args, &config),
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn,stylus=info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(log_colors(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .init();
}

/// Colour codes only for a terminal, and not when `NO_COLOR` is set to anything non-empty
/// (https://no-color.org).
fn log_colors(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}
