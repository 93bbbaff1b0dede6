//! The LoRAs a request may name, and `<lora:NAME:WEIGHT>` tags.
//!
//! Requests never give file paths: a tag names a file of the server's `--lora-dir` by its stem
//! (what A1111 does), or a catalog adapter by id or alias. Anything that looks like a path is
//! refused before it is looked up.

use std::path::{Path, PathBuf};

use stylus_core::{Result, limits};
use stylus_refiner::lora_folder::safetensors_files_in;

use super::error::ApiError;

/// One LoRA file of the server's folder.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraEntry {
    /// The file stem: what `<lora:NAME:w>` uses.
    pub name: String,
    /// The path inside the LoRA folder (what `/sdapi/v1/loras` shows; the server's own
    /// layout above it stays private).
    pub relative: PathBuf,
    pub path: PathBuf,
}

/// The `*.safetensors` files under `--lora-dir`, listed once at start.
#[derive(Debug, Clone, Default)]
pub struct LoraRegistry {
    entries: Vec<LoraEntry>,
}

impl LoraRegistry {
    /// Lists `dir` (none: an empty registry).
    pub fn scan(dir: Option<&Path>) -> Result<Self> {
        let Some(dir) = dir else {
            return Ok(Self::default());
        };
        if !dir.is_dir() {
            return Err(stylus_core::StylusError::InvalidArgument(format!(
                "--lora-dir {}: not a directory",
                dir.display()
            )));
        }
        let entries = safetensors_files_in(dir)?
            .into_iter()
            .map(|path| LoraEntry {
                name: path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                relative: path.strip_prefix(dir).unwrap_or(&path).to_path_buf(),
                path,
            })
            .collect();
        Ok(Self { entries })
    }

    pub fn entries(&self) -> &[LoraEntry] {
        &self.entries
    }

    /// The file named `name` (case-insensitive, as A1111 matches on Windows and macOS).
    pub fn find(&self, name: &str) -> Option<&LoraEntry> {
        self.entries
            .iter()
            .find(|e| e.name.eq_ignore_ascii_case(name))
    }
}

/// One `<lora:NAME:WEIGHT>` tag of a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraTag {
    pub name: String,
    pub weight: f32,
}

/// Longest adapter name accepted.
const MAX_NAME: usize = 200;

/// The `<lora:...>` tags of `prompt`, checked: names are names (no path separators, no `..`,
/// no control characters), weights finite numbers within the LoRA weight limits. A1111's
/// `<lora:name:te:unet>` form takes the first weight for both networks.
pub fn parse_tags(prompt: &str) -> Result<Vec<LoraTag>, ApiError> {
    let mut tags = Vec::new();
    let mut rest = prompt;
    while let Some(start) = rest.find("<lora:") {
        let after = &rest[start + "<lora:".len()..];
        let Some(end) = after.find('>') else {
            return Err(ApiError::bad_request(
                "an unclosed `<lora:` tag in the prompt (expected <lora:NAME:WEIGHT>)",
            ));
        };
        let body = &after[..end];
        rest = &after[end + 1..];
        let mut parts = body.split(':');
        let name = parts.next().unwrap_or("").trim();
        check_name(name)?;
        let weight = match parts.next() {
            None => 1.0,
            Some(text) => {
                let weight: f32 = text.trim().parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "<lora:{name}:{text}>: the weight `{text}` is not a number"
                    ))
                })?;
                if !weight.is_finite() || !limits::LORA_WEIGHT.contains(&weight) {
                    return Err(ApiError::bad_request(format!(
                        "<lora:{name}:{text}>: the weight must be in {}..={}",
                        limits::LORA_WEIGHT.start(),
                        limits::LORA_WEIGHT.end()
                    )));
                }
                weight
            }
        };
        tags.push(LoraTag {
            name: name.to_string(),
            weight,
        });
    }
    Ok(tags)
}

/// Refuses anything but a plain adapter name.
pub fn check_name(name: &str) -> Result<(), ApiError> {
    let refuse = |why: &str| {
        Err(ApiError::bad_request(format!(
            "LoRA name `{}`: {why}; adapters are named by the file stem of a LoRA the server \
             lists (GET /sdapi/v1/loras) or by a catalog id or alias, never by a file path",
            name.escape_debug()
        )))
    };
    if name.is_empty() {
        return refuse("empty");
    }
    if name.chars().count() > MAX_NAME {
        return refuse("too long");
    }
    if name.contains(['/', '\\']) || name.contains("..") {
        return refuse("a path");
    }
    if name.chars().any(char::is_control) {
        return refuse("control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_parse_names_and_weights() {
        let tags = parse_tags("a cat <lora:paper_cut:0.6> on a mat <LORA:x> <lora:ink>").unwrap();
        assert_eq!(
            tags,
            vec![
                LoraTag {
                    name: "paper_cut".into(),
                    weight: 0.6
                },
                LoraTag {
                    name: "ink".into(),
                    weight: 1.0
                },
            ]
        );
        assert_eq!(parse_tags("<lora:a:0.5:0.2>").unwrap()[0].weight, 0.5);
    }

    #[test]
    fn paths_and_bad_weights_are_refused() {
        for prompt in [
            "<lora:../../etc/passwd:1>",
            "<lora:/etc/passwd:1>",
            "<lora:C:\\x.safetensors:1>",
            "<lora:a\\b:1>",
            "<lora:..:1>",
            "<lora::1>",
            "<lora:a\u{0}b:1>",
        ] {
            let err = parse_tags(prompt).unwrap_err();
            assert_eq!(err.status, 400, "{prompt}");
        }
        let err = parse_tags("<lora:../../etc/passwd:1>").unwrap_err();
        assert!(
            err.detail.contains("never by a file path"),
            "{}",
            err.detail
        );
        for prompt in [
            "<lora:a:abc>",
            "<lora:a:inf>",
            "<lora:a:1e9>",
            "<lora:a:0.5",
        ] {
            assert_eq!(parse_tags(prompt).unwrap_err().status, 400, "{prompt}");
        }
    }
}
