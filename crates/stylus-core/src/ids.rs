//! Identities: which adapter, which base model.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Identifies an adapter, saying what kind of id it is. Civitai adapters use the Civitai *model*
/// id (as the paper does); local files without a Civitai card use their content hash.
///
/// In JSON (stores, plans) a Civitai id is a number and every other id a string with its kind as
/// a prefix (`sha256:<hex>`, `bundled:<name>`, `file:<path>`), read back to the same variant;
/// a string with no known prefix is a [`AdapterId::Name`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AdapterId {
    /// A Civitai model id.
    Civitai(u64),
    /// A local file by content: the lowercase hex sha256 of the file (the `sshs_model_hash`
    /// convention), written `sha256:<hex>`.
    Sha256(String),
    /// An entry of the bundled demo catalog, written `bundled:<name>`.
    Bundled(String),
    /// A LoRA file given by path (`--lora FILE`, `<lora:...>` of a folder), written `file:<path>`.
    File(std::path::PathBuf),
    /// Any other id (a test's or an application's own), written as is.
    Name(String),
}

impl AdapterId {
    /// The id of a local file from its hex sha256.
    pub fn local_from_sha256(hex: &str) -> Self {
        Self::Sha256(hex.to_ascii_lowercase())
    }

    /// The Civitai model id, when this is one.
    pub fn civitai(&self) -> Option<u64> {
        match self {
            Self::Civitai(id) => Some(*id),
            _ => None,
        }
    }
}

impl fmt::Display for AdapterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Civitai(id) => write!(f, "{id}"),
            Self::Sha256(hex) => write!(f, "sha256:{hex}"),
            Self::Bundled(name) => write!(f, "bundled:{name}"),
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::Name(name) => f.write_str(name),
        }
    }
}

impl FromStr for AdapterId {
    type Err = std::convert::Infallible;

    /// A number is a Civitai id; a known prefix names the kind; anything else is a name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(id) = s.parse::<u64>() {
            return Ok(Self::Civitai(id));
        }
        Ok(if let Some(hex) = s.strip_prefix("sha256:") {
            Self::local_from_sha256(hex)
        } else if let Some(name) = s.strip_prefix("bundled:") {
            Self::Bundled(name.to_string())
        } else if let Some(path) = s.strip_prefix("file:") {
            Self::File(path.into())
        } else {
            Self::Name(s.to_string())
        })
    }
}

impl Serialize for AdapterId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Civitai(id) => serializer.serialize_u64(*id),
            other => serializer.collect_str(other),
        }
    }
}

impl<'de> Deserialize<'de> for AdapterId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = AdapterId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Civitai model id (a number) or an adapter id string")
            }
            fn visit_u64<E: serde::de::Error>(self, id: u64) -> Result<AdapterId, E> {
                Ok(AdapterId::Civitai(id))
            }
            fn visit_i64<E: serde::de::Error>(self, id: i64) -> Result<AdapterId, E> {
                u64::try_from(id)
                    .map(AdapterId::Civitai)
                    .map_err(|_| E::custom(format!("adapter id {id} is negative")))
            }
            fn visit_str<E: serde::de::Error>(self, id: &str) -> Result<AdapterId, E> {
                Ok(id.parse().unwrap_or_else(|never| match never {}))
            }
        }
        deserializer.deserialize_any(Visitor)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_adapter_id_round_trips_through_json_and_text() {
        let ids = [
            AdapterId::Civitai(58390),
            AdapterId::local_from_sha256("47AAAF0D"),
            AdapterId::Bundled("watercolor".into()),
            AdapterId::File("/loras/my style.safetensors".into()),
            AdapterId::Name("local:kohya_lora".into()),
        ];
        let json = [
            "58390",
            "\"sha256:47aaaf0d\"",
            "\"bundled:watercolor\"",
            "\"file:/loras/my style.safetensors\"",
            "\"local:kohya_lora\"",
        ];
        for (id, json) in ids.iter().zip(json) {
            assert_eq!(serde_json::to_string(id).unwrap(), json);
            assert_eq!(serde_json::from_str::<AdapterId>(json).unwrap(), *id);
            assert_eq!(id.to_string().parse::<AdapterId>().unwrap(), *id);
        }
        // Stores written before the kinds were told apart hold the same JSON.
        assert_eq!(
            serde_json::from_str::<AdapterId>("\"58390\"").unwrap(),
            AdapterId::Civitai(58390)
        );
        assert_eq!(ids[0].civitai(), Some(58390));
        assert_eq!(ids[1].civitai(), None);
        assert!(serde_json::from_str::<AdapterId>("-3").is_err());
        assert!(serde_json::from_str::<AdapterId>("[1]").is_err());
    }
}
