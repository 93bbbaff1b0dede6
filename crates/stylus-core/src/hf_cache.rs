//! Finding a model in the Hugging Face hub cache (`huggingface_hub`'s on-disk layout):
//! `<cache>/models--<org>--<name>/refs/<revision>` holds a commit hash and
//! `<cache>/models--<org>--<name>/snapshots/<hash>/` holds the files.

use std::path::{Path, PathBuf};

use crate::{Result, StylusError};

/// The hub cache directory as `huggingface_hub` resolves it: `$HF_HUB_CACHE`, else
/// `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
pub fn hf_hub_cache_dir() -> Option<PathBuf> {
    let env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(cache) = env("HF_HUB_CACHE") {
        return Some(cache);
    }
    if let Some(home) = env("HF_HOME") {
        return Some(home.join("hub"));
    }
    let cache_home = env("XDG_CACHE_HOME").or_else(|| env("HOME").map(|h| h.join(".cache")))?;
    Some(cache_home.join("huggingface").join("hub"))
}

/// The snapshot directory of `repo_id` (`org/name`) at `revision` (a branch or tag under
/// `refs/`, or a commit hash) inside `cache`.
pub fn hf_snapshot_dir(cache: &Path, repo_id: &str, revision: &str) -> Result<PathBuf> {
    if repo_id.split('/').count() > 2 || repo_id.split('/').any(str::is_empty) {
        return Err(StylusError::InvalidArgument(format!(
            "Hugging Face repo id `{repo_id}` is not of the form `org/name` or `name`"
        )));
    }
    let repo_dir = cache.join(format!("models--{}", repo_id.replace('/', "--")));
    if !repo_dir.is_dir() {
        return Err(StylusError::model(
            &repo_dir,
            format!("`{repo_id}` is not in the Hugging Face cache (download it first)"),
        ));
    }
    let ref_file = repo_dir.join("refs").join(revision);
    let commit = match std::fs::read_to_string(&ref_file) {
        Ok(hash) => hash.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => revision.to_owned(),
        Err(e) => return Err(StylusError::io(&ref_file, e)),
    };
    let snapshot = repo_dir.join("snapshots").join(&commit);
    if snapshot.is_dir() {
        Ok(snapshot)
    } else {
        Err(StylusError::model(
            &snapshot,
            format!("revision `{revision}` of `{repo_id}` has no snapshot in the cache"),
        ))
    }
}
