//! Base checkpoints from the Hugging Face hub: `hf:org/name[@revision]` (a diffusers repo) or
//! `hf:org/name/path/file.safetensors[@revision]` (a single-file checkpoint), resolved in the
//! standard hub cache that huggingface_hub, diffusers, transformers and ComfyUI managers share
//! (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`: `models--org--name/`
//! with `refs/`, `snapshots/<commit>/` and `blobs/`). Missing files are downloaded by the
//! `hf-hub` crate (the hub protocol and cache layout; chunked `Range` downloads that resume),
//! wrapped here in a per-file deadline, and checked: a file whose hub etag is a sha256 (every
//! LFS file, so every weight file) must hash to it, else it is deleted and named.
//!
//! Only safetensors weights are fetched; a repo with pickle weights only is refused. With
//! `HF_HUB_OFFLINE=1` (or `--offline`) nothing is downloaded: the cache must have the files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::api::tokio::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Repo, RepoType};
use stylus_core::hf_cache::{hf_hub_cache_dir, hf_snapshot_dir};

use crate::cache::{is_sha256, sha256_file};
use crate::error::FetchError;

/// The components of an SD 1.x diffusers repo that Stylus loads: (folder, weight file stem).
const COMPONENTS: [(&str, &str); 3] = [
    ("unet", "diffusion_pytorch_model"),
    ("vae", "diffusion_pytorch_model"),
    ("text_encoder", "model"),
];
/// Small files fetched when the repo has them.
const OPTIONAL_FILES: [&str; 6] = [
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
];

/// A checkpoint named on the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubCheckpoint {
    /// `org/name`.
    pub repo_id: String,
    /// A branch, tag or commit (`main` when not given).
    pub revision: String,
    /// A single-file checkpoint's path in the repo; `None` for a diffusers repo.
    pub file: Option<String>,
}

impl std::fmt::Display for HubCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hf:{}", self.repo_id)?;
        if let Some(file) = &self.file {
            write!(f, "/{file}")?;
        }
        write!(f, "@{}", self.revision)
    }
}

impl HubCheckpoint {
    /// Parses `hf:org/name[/path/file.safetensors][@revision]`; `None` when `spec` does not
    /// start with `hf:` (a local path).
    pub fn parse(spec: &str) -> Option<Result<Self, FetchError>> {
        let rest = spec.strip_prefix("hf:")?;
        Some(Self::parse_rest(spec, rest))
    }

    fn parse_rest(spec: &str, rest: &str) -> Result<Self, FetchError> {
        let bad = |why: &str| {
            FetchError::InvalidArgument(format!(
                "checkpoint `{spec}`: {why}; expected hf:org/name[@revision] (a diffusers repo) \
                 or hf:org/name/file.safetensors[@revision]"
            ))
        };
        let (path, revision) = match rest.rsplit_once('@') {
            Some((path, revision)) => (path, revision),
            None => (rest, "main"),
        };
        let plain = |part: &str| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if revision.is_empty() || !revision.split('/').all(plain) {
            return Err(bad("the revision is not a branch, tag or commit name"));
        }
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() < 2 || !parts.iter().all(|p| plain(p)) {
            return Err(bad("the repo id is not `org/name`"));
        }
        let file = (parts.len() > 2).then(|| parts[2..].join("/"));
        if let Some(file) = &file
            && !file.ends_with(".safetensors")
        {
            return Err(bad("a single-file checkpoint must be a .safetensors file"));
        }
        Ok(Self {
            repo_id: format!("{}/{}", parts[0], parts[1]),
            revision: revision.to_string(),
            file,
        })
    }
}

/// Where and how hub files are fetched.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// The hub cache (see the module docs).
    pub cache_dir: PathBuf,
    /// `https://huggingface.co`, or `HF_ENDPOINT`.
    pub endpoint: String,
    /// `HF_TOKEN`, for gated repos.
    pub token: Option<String>,
    /// No network: only what the cache holds.
    pub offline: bool,
    /// Prefer the `.fp16.safetensors` weight files (half the download; loaded as f32).
    pub fp16: bool,
    /// Limit of one file (metadata and body).
    pub deadline: Duration,
    /// Progress bars on stderr.
    pub progress: bool,
}

impl HubOptions {
    /// From the environment as huggingface_hub reads it: `HF_HUB_CACHE`/`HF_HOME`,
    /// `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE=1`; and `STYLUS_OFFLINE=1`.
    pub fn from_env() -> Result<Self, FetchError> {
        Self::from_vars(|name| std::env::var(name).ok(), hf_hub_cache_dir())
    }

    /// [`Self::from_env`] reading variables through `var`, with the cache dir given.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        cache_dir: Option<PathBuf>,
    ) -> Result<Self, FetchError> {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let truthy = |v: String| matches!(v.trim(), "1" | "true" | "yes" | "on" | "TRUE" | "ON");
        let cache_dir = cache_dir.ok_or_else(|| {
            FetchError::InvalidArgument(
                "no Hugging Face cache folder: set HF_HUB_CACHE, HF_HOME or HOME".into(),
            )
        })?;
        Ok(Self {
            cache_dir,
            endpoint: set("HF_ENDPOINT")
                .map(|e| e.trim().trim_end_matches('/').to_string())
                .unwrap_or_else(|| "https://huggingface.co".into()),
            token: set("HF_TOKEN").map(|t| t.trim().to_string()),
            offline: set("HF_HUB_OFFLINE").is_some_and(truthy)
                || set("STYLUS_OFFLINE").is_some_and(truthy),
            fp16: false,
            deadline: Duration::from_secs(3600),
            progress: false,
        })
    }
}

/// The local path of `checkpoint`: the snapshot folder of a diffusers repo (with the files
/// Stylus loads), or the single file. Downloads what the cache lacks unless offline.
pub async fn resolve_checkpoint(
    checkpoint: &HubCheckpoint,
    options: &HubOptions,
) -> Result<PathBuf, FetchError> {
    let label = checkpoint.to_string();
    let not_found = |message: String| FetchError::Hub {
        checkpoint: label.clone(),
        message,
    };
    if options.offline {
        let snapshot = hf_snapshot_dir(
            &options.cache_dir,
            &checkpoint.repo_id,
            &checkpoint.revision,
        )
        .map_err(|e| not_found(format!("{e} (offline: HF_HUB_OFFLINE or --offline)")))?;
        return local_files(checkpoint, &snapshot, options.fp16)
            .map_err(|m| not_found(format!("{m} (offline: HF_HUB_OFFLINE or --offline)")));
    }
    let api = ApiBuilder::new()
        .with_cache_dir(options.cache_dir.clone())
        .with_endpoint(options.endpoint.clone())
        .with_token(options.token.clone())
        .with_progress(options.progress)
        .build()
        .map_err(|source| hub_error(&label, "setting up the client", source))?;
    let repo = api.repo(Repo::with_revision(
        checkpoint.repo_id.clone(),
        RepoType::Model,
        checkpoint.revision.clone(),
    ));
    let info = within(options.deadline, &label, "listing the repo", repo.info()).await?;
    let listed: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let wanted = match &checkpoint.file {
        Some(file) if listed.contains(file) => vec![file.clone()],
        Some(file) => return Err(not_found(format!("the repo has no file `{file}`"))),
        None => diffusers_files(&label, &listed, options.fp16)?,
    };
    let mut paths = Vec::with_capacity(wanted.len());
    for file in &wanted {
        paths.push(fetch_file(&repo, &label, file, options.deadline).await?);
    }
    match &checkpoint.file {
        Some(_) => Ok(paths.remove(0)),
        // The snapshot folder: the first file's path minus the file's own path in the repo.
        None => Ok(snapshot_root(&paths[0], &wanted[0])),
    }
}

/// Which files of a diffusers repo listing to fetch: each component's weights (safetensors
/// only; the fp16 variant first when asked, else the full-precision file first) and the small
/// files the repo has.
fn diffusers_files(label: &str, listed: &[String], fp16: bool) -> Result<Vec<String>, FetchError> {
    let mut wanted = Vec::new();
    for (folder, stem) in COMPONENTS {
        let full = format!("{folder}/{stem}.safetensors");
        let half = format!("{folder}/{stem}.fp16.safetensors");
        let order = if fp16 { [half, full] } else { [full, half] };
        match order.into_iter().find(|f| listed.contains(f)) {
            Some(file) => wanted.push(file),
            None => {
                let pickle = listed
                    .iter()
                    .find(|f| f.starts_with(&format!("{folder}/")) && f.ends_with(".bin"));
                return Err(match pickle {
                    Some(file) => FetchError::Pickle {
                        adapter: label.to_string(),
                        file_name: file.clone(),
                        what: "a PyTorch pickle (.bin) and the repo has no safetensors weights for it",
                    },
                    None => FetchError::Hub {
                        checkpoint: label.to_string(),
                        message: format!(
                            "no {folder}/{stem}.safetensors (nor .fp16.safetensors): not an SD \
                             diffusers repo"
                        ),
                    },
                });
            }
        }
    }
    wanted.extend(
        OPTIONAL_FILES
            .iter()
            .filter(|f| listed.iter().any(|l| l == *f))
            .map(|f| f.to_string()),
    );
    Ok(wanted)
}

/// The checkpoint's files in a snapshot folder of the cache (offline).
fn local_files(checkpoint: &HubCheckpoint, snapshot: &Path, fp16: bool) -> Result<PathBuf, String> {
    let has = |file: &str| snapshot.join(file).is_file();
    match &checkpoint.file {
        Some(file) if has(file) => Ok(snapshot.join(file)),
        Some(file) => Err(format!("{} has no {file}", snapshot.display())),
        None => {
            let listed: Vec<String> = COMPONENTS
                .iter()
                .flat_map(|(folder, stem)| {
                    [
                        format!("{folder}/{stem}.safetensors"),
                        format!("{folder}/{stem}.fp16.safetensors"),
                    ]
                })
                .filter(|f| has(f))
                .collect();
            diffusers_files("", &listed, fp16)
                .map(|_| snapshot.to_path_buf())
                .map_err(|_| {
                    format!(
                        "{} lacks the weights of unet, vae or text_encoder",
                        snapshot.display()
                    )
                })
        }
    }
}

/// Fetches one file into the cache (or finds it there) and checks an LFS file's sha256.
async fn fetch_file(
    repo: &ApiRepo,
    label: &str,
    file: &str,
    deadline: Duration,
) -> Result<PathBuf, FetchError> {
    let path = within(deadline, label, file, repo.get(file)).await?;
    // The cache's snapshot entry links to `blobs/<etag>`; an LFS etag is the file's sha256.
    let blob = std::fs::canonicalize(&path).map_err(|e| FetchError::io(&path, e))?;
    let etag = blob
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if is_sha256(etag) {
        let actual = tokio::task::spawn_blocking({
            let blob = blob.clone();
            move || sha256_file(&blob)
        })
        .await
        .map_err(|e| FetchError::InvalidArgument(format!("hashing {}: {e}", blob.display())))??;
        if actual != etag {
            // Neither the bad blob nor the link to it may stay: the next run downloads again.
            let _ = std::fs::remove_file(&blob);
            let _ = std::fs::remove_file(&path);
            return Err(FetchError::HashMismatch {
                adapter: format!("{label} {file}"),
                expected: etag.to_string(),
                actual,
            });
        }
    }
    Ok(path)
}

/// `path` (`.../snapshots/<commit>/<file>`) without `file`'s components.
fn snapshot_root(path: &Path, file: &str) -> PathBuf {
    let mut root = path.to_path_buf();
    for _ in file.split('/') {
        root.pop();
    }
    root
}

async fn within<T>(
    deadline: Duration,
    label: &str,
    what: &str,
    future: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, FetchError> {
    match tokio::time::timeout(deadline, future).await {
        Ok(result) => result.map_err(|source| hub_error(label, what, source)),
        Err(_) => Err(FetchError::Hub {
            checkpoint: label.to_string(),
            message: format!("{what}: no result within {} s", deadline.as_secs_f64()),
        }),
    }
}

fn hub_error(label: &str, what: &str, source: ApiError) -> FetchError {
    FetchError::HubRequest {
        checkpoint: label.to_string(),
        what: what.to_string(),
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_into_repo_revision_and_file() {
        let parse = |s: &str| HubCheckpoint::parse(s).unwrap();
        assert!(HubCheckpoint::parse("models/sd15").is_none());
        let repo = parse("hf:runwayml/stable-diffusion-v1-5").unwrap();
        assert_eq!(
            (repo.repo_id.as_str(), repo.revision.as_str(), repo.file),
            ("runwayml/stable-diffusion-v1-5", "main", None)
        );
        let file = parse("hf:org/name/sub/v1-5.safetensors@fp16").unwrap();
        assert_eq!(file.file.as_deref(), Some("sub/v1-5.safetensors"));
        assert_eq!(file.revision, "fp16");
        assert_eq!(file.to_string(), "hf:org/name/sub/v1-5.safetensors@fp16");
        for bad in [
            "hf:",
            "hf:name",
            "hf:org/",
            "hf:org/../x",
            "hf:org/name/../../etc/passwd.safetensors",
            "hf:org/name/model.ckpt",
            "hf:org/name@",
            "hf:org/na me",
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn weights_are_safetensors_and_the_fp16_variant_only_when_asked() {
        let listed: Vec<String> = [
            "model_index.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "vae/diffusion_pytorch_model.fp16.safetensors",
            "text_encoder/model.safetensors",
            "text_encoder/pytorch_model.bin",
            "safety_checker/model.safetensors",
        ]
        .map(String::from)
        .to_vec();
        let full = diffusers_files("x", &listed, false).unwrap();
        assert_eq!(
            full,
            [
                "unet/diffusion_pytorch_model.safetensors",
                "vae/diffusion_pytorch_model.fp16.safetensors",
                "text_encoder/model.safetensors",
                "model_index.json",
                "unet/config.json",
            ]
        );
        let half = diffusers_files("x", &listed, true).unwrap();
        assert_eq!(half[0], "unet/diffusion_pytorch_model.fp16.safetensors");
        let pickles: Vec<String> = listed
            .iter()
            .filter(|f| !f.starts_with("text_encoder/model"))
            .cloned()
            .collect();
        let err = diffusers_files("hf:a/b@main", &pickles, false).unwrap_err();
        assert!(matches!(err, FetchError::Pickle { .. }), "{err}");
        assert!(
            err.to_string().contains("text_encoder/pytorch_model.bin"),
            "{err}"
        );
    }
}
