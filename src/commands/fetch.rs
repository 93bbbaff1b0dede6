//! `stylus fetch`: download the adapters of a plan (`stylus select --json`) or given ids/URLs into
//! the adapter cache (crate `stylus-fetch`), verified before they enter it.

use std::io::Read;
use std::path::PathBuf;

use stylus_core::{CacheConfig, StylusConfig, StylusError};
use stylus_fetch::{AdapterCache, FetchConfig, FetchRequest, Fetcher, parse_spec, plan_adapters};

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Environment:
  CIVITAI_API_KEY              sent as `Authorization: Bearer` to civitai.com (some files need it)
  STYLUS_CIVITAI_TOKEN_QUERY=1 send it as Civitai's `?token=` query parameter instead
  STYLUS_ADAPTER_CACHE         the cache folder (default ~/.cache/stylus/adapters)
  STYLUS_CACHE_MAX_GB          the cache's size limit (default 20)
  STYLUS_FETCH_MAX_FILE_MB     the size cap of one file (default 2000)
  STYLUS_OFFLINE=1             same as --offline
Timeouts, retries and the per-file deadline: --timeout, --retries, --deadline (STYLUS_CIVITAI_*).")]
pub struct Args {
    /// A plan written by `stylus select --json` (JSON lines; `-` reads stdin).
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
    /// Download URLs, or `civitai:<model version id>` (a bare number is a version id).
    pub specs: Vec<String>,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Files downloaded at once (1..=16).
    #[arg(long, default_value_t = 3, value_parser = super::usize_in(1..=16))]
    pub jobs: usize,
    /// No network: only report what the cache already has (an error for anything missing).
    #[arg(long)]
    pub offline: bool,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// Where the adapter cache is and how large it may grow (`fetch`, `generate --fetch`).
#[derive(Debug, Clone, clap::Args)]
pub struct CacheArgs {
    /// The adapter cache folder (default: STYLUS_ADAPTER_CACHE, else ~/.cache/stylus/adapters).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// The cache's size limit in GB (default: STYLUS_CACHE_MAX_GB, else 20); least recently
    /// used files are evicted beyond it, never one in use.
    #[arg(long, value_name = "GB", value_parser = stylus_fetch::cache::gb_to_bytes)]
    pub cache_max_gb: Option<u64>,
}

impl CacheArgs {
    /// The cache: each setting from the flag, else the environment, else the config's `[cache]`
    /// table, else the default.
    pub(crate) fn open(&self, config: &CacheConfig) -> Result<AdapterCache, StylusError> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let dir = self
            .cache_dir
            .clone()
            .or_else(|| env("STYLUS_ADAPTER_CACHE").map(PathBuf::from))
            .or_else(|| config.dir.clone())
            .or_else(AdapterCache::default_dir)
            .ok_or_else(|| {
                StylusError::InvalidArgument(
                    "HOME is not set: give the adapter cache folder with --cache-dir".into(),
                )
            })?;
        let max = match (self.cache_max_gb, env("STYLUS_CACHE_MAX_GB"), config.max_gb) {
            (Some(max), _, _) => max,
            (None, Some(_), _) | (None, None, None) => AdapterCache::default_max_bytes()?,
            (None, None, Some(gb)) => (gb * 1e9) as u64,
        };
        Ok(AdapterCache::open(dir, max)?)
    }
}

pub fn run(args: Args, config: &StylusConfig) -> Result<(), StylusError> {
    let mut requests: Vec<FetchRequest> = Vec::new();
    if let Some(path) = &args.plan {
        let mut text = String::new();
        if path.as_os_str() == "-" {
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| StylusError::io("<stdin>", e))?;
        } else {
            text = std::fs::read_to_string(path).map_err(|e| StylusError::io(path, e))?;
        }
        for adapter in plan_adapters(&text)? {
            requests.push(FetchRequest::from_adapter(&adapter)?);
        }
    }
    for spec in &args.specs {
        requests.push(parse_spec(spec)?);
    }
    if requests.is_empty() && args.plan.is_some() && args.specs.is_empty() {
        // A plan may select no adapter ("no adapter" is a normal answer): nothing to do.
        eprintln!("the plan selects no adapters: nothing to fetch");
        return Ok(());
    }
    if requests.is_empty() {
        return Err(StylusError::InvalidArgument(
            "nothing to fetch: give --plan FILE (from `stylus select --json`) or URLs / \
             civitai:<version id>"
                .into(),
        ));
    }
    let network = super::network("CIVITAI", config)?;
    let mut fetch_config = FetchConfig::from_env(&network)?;
    fetch_config.concurrency = args.jobs;
    fetch_config.offline |= args.offline;
    fetch_config.progress = !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let cache = args.cache.open(&config.cache)?;
    let fetcher = Fetcher::new(cache, fetch_config)?;
    let runtime = super::runtime()?;
    let results = runtime.block_on(fetcher.fetch_all(&requests));
    let mut errors = Vec::new();
    for (request, result) in requests.iter().zip(results) {
        match result {
            Ok(fetched) => println!(
                "{}\t{}\t{}\t{}",
                if fetched.downloaded {
                    "downloaded"
                } else {
                    "cached"
                },
                fetched.sha256,
                request.label,
                fetched.path.display()
            ),
            Err(error) => errors.push(error),
        }
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0).into()),
        _ => Err(stylus_fetch::FetchError::Several { errors }.into()),
    }
}
