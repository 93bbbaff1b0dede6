//! One module per subcommand.

pub mod bench;
pub mod cache;
pub mod eval;
pub mod fetch;
pub mod generate;
pub mod index;
pub mod info;
pub mod merge;
pub mod retrieve;
pub mod select;
pub mod serve;

use std::sync::OnceLock;

use stylus_core::{NetworkConfig, StylusConfig, StylusError};

/// The network flags of the command line (`--timeout`, `--retries`, `--deadline`).
static NETWORK_FLAGS: OnceLock<NetworkConfig> = OnceLock::new();

/// Records the command line's network flags (once, before the command runs).
pub fn set_network_flags(flags: NetworkConfig) {
    let _ = NETWORK_FLAGS.set(flags);
}

/// The command line's network flags alone (the facade adds the environment's and the config's).
pub(crate) fn network_flags() -> NetworkConfig {
    NETWORK_FLAGS.get().copied().unwrap_or_default()
}

/// The network limits of the client playing `role` (`LLM`, `VLM`, `EMBED`, `CIVITAI`): the
/// command line's flags, else the environment's, else the config's `[network]`.
pub(crate) fn network(role: &str, config: &StylusConfig) -> Result<NetworkConfig, StylusError> {
    let flags = NETWORK_FLAGS.get().copied().unwrap_or_default();
    Ok(flags.or(NetworkConfig::from_env(role)?).or(config.network))
}

/// `--checkpoint` as given: `Some` hub checkpoint for `hf:...`, `None` for a local path (which
/// must exist). Checked before anything loads.
pub(crate) fn hub_checkpoint(
    arg: &std::path::Path,
) -> Result<Option<stylus_fetch::HubCheckpoint>, StylusError> {
    if let Some(parsed) = arg.to_str().and_then(stylus_fetch::HubCheckpoint::parse) {
        return Ok(Some(parsed?));
    }
    if !arg.exists() {
        return Err(StylusError::InvalidArgument(format!(
            "--checkpoint {}: no such file or directory",
            arg.display()
        )));
    }
    Ok(None)
}

/// The local path of a hub checkpoint: found in, or downloaded into, the hub cache.
pub(crate) fn resolve_hub_checkpoint(
    hub: &stylus_fetch::HubCheckpoint,
    offline: bool,
    fp16: bool,
) -> Result<std::path::PathBuf, StylusError> {
    let mut options = stylus_fetch::HubOptions::from_env()?;
    options.offline |= offline;
    options.fp16 = fp16;
    options.progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    Ok(runtime()?.block_on(stylus_fetch::resolve_checkpoint(hub, &options))?)
}

/// A tokio runtime for the async pipeline stages.
pub fn runtime() -> Result<tokio::runtime::Runtime, StylusError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| StylusError::io("<tokio runtime>", e))
}

/// `FILE[:WEIGHT]` of `--lora`: the weight is what follows the last `:` unless the whole spec
/// names an existing file (so colons in file names and Windows drive letters survive). The file
/// must exist; the weight must be a finite number within [`stylus_core::limits::LORA_WEIGHT`].
pub(crate) fn parse_lora_spec(spec: &str) -> Result<(std::path::PathBuf, f32), StylusError> {
    use std::path::{Path, PathBuf};
    let whole = Path::new(spec);
    let (path, weight) = match spec.rsplit_once(':') {
        _ if whole.is_file() => (PathBuf::from(spec), 1.0),
        Some((path, weight)) if !path.is_empty() && !weight.contains(['/', '\\']) => {
            let weight: f32 = weight.trim().parse().map_err(|_| {
                StylusError::InvalidArgument(format!(
                    "--lora {spec}: bad weight `{weight}` (expected FILE[:WEIGHT], a number such \
                     as 0.8)"
                ))
            })?;
            (PathBuf::from(path), weight)
        }
        _ => (PathBuf::from(spec), 1.0),
    };
    let range = stylus_core::limits::LORA_WEIGHT;
    if !weight.is_finite() || !range.contains(&weight) {
        return Err(StylusError::InvalidArgument(format!(
            "--lora {spec}: weight {weight} is outside {}..={}",
            range.start(),
            range.end()
        )));
    }
    if !path.is_file() {
        return Err(StylusError::InvalidArgument(format!(
            "--lora {spec}: {} is not a file",
            path.display()
        )));
    }
    Ok((path, weight))
}

/// A `usize` flag value within `range` (clap value parser); the message gives the range.
pub(crate) fn usize_in(
    range: std::ops::RangeInclusive<usize>,
) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    move |text: &str| {
        let value: usize = text
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not a whole number"))?;
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(format!(
                "{value} is outside the allowed range {}..={}",
                range.start(),
                range.end()
            ))
        }
    }
}

/// Refuses to replace an existing `path` unless `force`: `flag` names the option in the message.
pub(crate) fn refuse_overwrite(
    path: &std::path::Path,
    flag: &str,
    force: bool,
) -> Result<(), StylusError> {
    if !force && std::fs::symlink_metadata(path).is_ok() {
        return Err(StylusError::InvalidArgument(format!(
            "{flag} {}: already exists; refusing to overwrite it (pass --force to replace it, or \
             choose another path)",
            path.display()
        )));
    }
    Ok(())
}
