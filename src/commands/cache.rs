//! `stylus cache list|prune|verify`: the adapter cache of `stylus fetch`.

use std::path::PathBuf;

use stylus_core::{StylusConfig, StylusError};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
    /// The cache folder (default: STYLUS_ADAPTER_CACHE, else ~/.cache/stylus/adapters).
    #[arg(long, global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// The size limit in GB (default: STYLUS_CACHE_MAX_GB, else 20).
    #[arg(long, global = true, value_name = "GB", value_parser = stylus_fetch::cache::gb_to_bytes)]
    pub cache_max_gb: Option<u64>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// The cached files, most recently used first.
    List,
    /// Drop stale entries, orphan and stale temp files, and evict down to the size limit.
    Prune,
    /// Re-hash every file; with --fix, remove the ones that fail.
    Verify {
        #[arg(long)]
        fix: bool,
    },
}

pub fn run(args: Args, config: &StylusConfig) -> Result<(), StylusError> {
    let flags = super::fetch::CacheArgs {
        cache_dir: args.cache_dir,
        cache_max_gb: args.cache_max_gb,
    };
    let cache = flags.open(&config.cache)?;
    match args.action {
        Action::List => {
            let entries = cache.list()?;
            for e in &entries {
                println!(
                    "{}\t{:>10}\t{}\t{}\t{}",
                    e.sha256,
                    e.size,
                    e.model_id.map_or("-".into(), |m| m.to_string()),
                    e.version_id.map_or("-".into(), |v| v.to_string()),
                    e.file_name
                );
            }
            let total: u64 = entries.iter().map(|e| e.size).sum();
            eprintln!(
                "{} file(s), {:.2} GB of {:.2} GB in {}",
                entries.len(),
                total as f64 / 1e9,
                cache.max_bytes() as f64 / 1e9,
                cache.root().display()
            );
        }
        Action::Prune => {
            let report = cache.prune(None)?;
            for e in &report.evicted {
                println!("evicted\t{}\t{}", e.sha256, e.file_name);
            }
            eprintln!(
                "freed {:.2} GB; {:.2} GB left{}",
                report.freed as f64 / 1e9,
                report.total as f64 / 1e9,
                if report.kept_pinned > 0 {
                    format!(" ({} file(s) in use kept)", report.kept_pinned)
                } else {
                    String::new()
                }
            );
        }
        Action::Verify { fix } => {
            let problems = cache.verify()?;
            for problem in &problems {
                println!("{problem}");
                if fix
                    && let stylus_fetch::VerifyProblem::Corrupt { sha256, .. }
                    | stylus_fetch::VerifyProblem::WrongSize { sha256, .. } = problem
                {
                    cache.remove(sha256)?;
                }
            }
            if fix {
                cache.prune(None)?;
            }
            if !problems.is_empty() && !fix {
                return Err(StylusError::Store {
                    path: cache.root().to_path_buf(),
                    message: format!(
                        "{} problem(s); `stylus cache verify --fix` removes the bad files",
                        problems.len()
                    ),
                });
            }
            eprintln!("{} problem(s)", problems.len());
        }
    }
    Ok(())
}
