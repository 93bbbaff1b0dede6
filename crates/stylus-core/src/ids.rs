//! Identities: which adapter, which base model.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Identifies an adapter. Civitai adapters use the Civitai *model* id (as the paper does); local
/// files without a Civitai card use their content hash.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AdapterId {
    /// A Civitai model id; serialized as a JSON number.
    Civitai(u64),
    /// A local file, `sha256:<hex>` of its content (the `sshs_model_hash` convention).
    Local(String),
}

impl AdapterId {
    /// The id of a local file from its hex sha256.
    pub fn local_from_sha256(hex: &str) -> Self {
        Self::Local(format!("sha256:{}", hex.to_ascii_lowercase()))
    }
}

impl fmt::Display for AdapterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Civitai(id) => write!(f, "{id}"),
            Self::Local(hash) => f.write_str(hash),
        }
    }
}

impl FromStr for AdapterId {
    type Err = std::convert::Infallible;

    /// A number is a Civitai id; anything else is a local id.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().parse::<u64>() {
            Ok(id) => Self::Civitai(id),
            Err(_) => Self::Local(s.trim().to_string()),
        })
    }
}

/// The family of base model an adapter or checkpoint was made for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaseModel {
    /// Stable Diffusion 1.x (1.4, 1.5 and their fine-tunes): what Stylus generates with.
    Sd1,
    /// Stable Diffusion 2.x (OpenCLIP text encoder, 1024-dim context).
    Sd2,
    /// Stable Diffusion XL (two text encoders).
    Sdxl,
    /// Anything else, with the name the catalog used (Pony, SD 3, Flux, "Other", ...).
    Other(String),
}

impl BaseModel {
    /// Reads a Civitai `baseModel` string ("SD 1.5", "SDXL 1.0", "SD 2.1 768", ...) or the
    /// `ss_base_model_version` / `modelspec.architecture` of a kohya/modelspec file.
    pub fn parse(name: &str) -> Self {
        let n = name.trim().to_ascii_lowercase();
        let compact: String = n.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        if compact.starts_with("sd1")
            || compact.starts_with("sdv1")
            || compact.starts_with("stablediffusionv1")
        {
            Self::Sd1
        } else if compact.starts_with("sdxl") || compact.starts_with("stablediffusionxl") {
            Self::Sdxl
        } else if compact.starts_with("sd2")
            || compact.starts_with("sdv2")
            || compact.starts_with("stablediffusionv2")
        {
            Self::Sd2
        } else {
            Self::Other(name.trim().to_string())
        }
    }

    /// True for the SD 1.x family, the only one Stylus merges into.
    pub fn is_sd1(&self) -> bool {
        matches!(self, Self::Sd1)
    }
}

impl fmt::Display for BaseModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sd1 => f.write_str("SD 1.x"),
            Self::Sd2 => f.write_str("SD 2.x"),
            Self::Sdxl => f.write_str("SDXL"),
            Self::Other(name) => f.write_str(name),
        }
    }
}
