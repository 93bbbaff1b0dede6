//! Adapter cards (raw catalog entries) and refined adapter documents.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{AdapterId, BaseModel};

/// The downloadable file of an adapter version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AdapterFile {
    /// File name as published (`detail_tweaker.safetensors`); its stem is the A1111 alias.
    pub name: String,
    /// Lower-case hex sha256 of the whole file, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Where to download it (Civitai `downloadUrl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_url: Option<String>,
    /// Size in kilobytes, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_kb: Option<f64>,
}

/// Popularity numbers from the catalog.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AdapterStats {
    #[serde(default)]
    pub downloads: u64,
    #[serde(default)]
    pub favorites: u64,
    #[serde(default)]
    pub rating: f32,
    #[serde(default)]
    pub rating_count: u64,
}

/// A raw adapter model card as the catalog (Civitai, a local folder) describes it. Every text field
/// is untrusted input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterCard {
    pub id: AdapterId,
    /// Civitai model version id of the chosen version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<u64>,
    pub title: String,
    /// The A1111 alias (`<lora:alias:w>`): the file stem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Catalog type: `LORA`, `LoCon`, `DoRA`, ...
    pub adapter_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<BaseModel>,
    /// Clean text (HTML already removed).
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub trigger_words: Vec<String>,
    /// Prompts of sample images (negative prompts excluded on purpose, as in the paper).
    #[serde(default)]
    pub sample_prompts: Vec<String>,
    /// Sample image URLs or local paths, for vision refiners.
    #[serde(default)]
    pub sample_images: Vec<String>,
    #[serde(default)]
    pub nsfw: bool,
    /// Civitai's "person of interest" flag (real people).
    #[serde(default)]
    pub poi: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<AdapterFile>,
    #[serde(default)]
    pub stats: AdapterStats,
    /// Number of sample images the catalog lists for the chosen version.
    #[serde(default)]
    pub image_count: usize,
}

impl AdapterCard {
    /// A card with only the required fields set.
    pub fn new(id: AdapterId, title: impl Into<String>, adapter_type: impl Into<String>) -> Self {
        Self {
            id,
            version_id: None,
            title: title.into(),
            alias: None,
            adapter_type: adapter_type.into(),
            base_model: None,
            description: String::new(),
            tags: Vec::new(),
            trigger_words: Vec::new(),
            sample_prompts: Vec::new(),
            sample_images: Vec::new(),
            nsfw: false,
            poi: false,
            file: None,
            stats: AdapterStats::default(),
            image_count: 0,
        }
    }

    /// The A1111 alias: the explicit alias, else the file stem, else the id.
    pub fn a1111_alias(&self) -> String {
        if let Some(alias) = &self.alias {
            return alias.clone();
        }
        if let Some(file) = &self.file {
            let stem = file
                .name
                .rsplit_once('.')
                .map_or(file.name.as_str(), |(s, _)| s);
            if !stem.is_empty() {
                return stem.to_string();
            }
        }
        self.id.to_string()
    }

    /// True when any tag equals `tag`, ignoring case.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t.eq_ignore_ascii_case(tag))
    }
}

/// What an adapter is about, used by the composer's rules (characters blocked unless asked for,
/// at most two styles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Style,
    Character,
    Celebrity,
    Clothing,
    Concept,
    Pose,
    Background,
    Building,
    Vehicle,
    Animal,
    Object,
    Action,
}

impl Category {
    /// Every category, in a stable order.
    pub const ALL: [Category; 12] = [
        Self::Style,
        Self::Character,
        Self::Celebrity,
        Self::Clothing,
        Self::Concept,
        Self::Pose,
        Self::Background,
        Self::Building,
        Self::Vehicle,
        Self::Animal,
        Self::Object,
        Self::Action,
    ];

    /// The snake_case name used in JSON and config files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Style => "style",
            Self::Character => "character",
            Self::Celebrity => "celebrity",
            Self::Clothing => "clothing",
            Self::Concept => "concept",
            Self::Pose => "pose",
            Self::Background => "background",
            Self::Building => "building",
            Self::Vehicle => "vehicle",
            Self::Animal => "animal",
            Self::Object => "object",
            Self::Action => "action",
        }
    }

    /// Parses a category name (case-insensitive; plural forms accepted).
    pub fn parse(name: &str) -> Option<Self> {
        let n = name.trim().to_ascii_lowercase();
        let n = n.strip_suffix('s').unwrap_or(&n);
        Self::ALL.into_iter().find(|c| c.as_str() == n)
    }

    /// Characters and celebrities: blocked unless the prompt asks for one.
    pub fn is_person(self) -> bool {
        matches!(self, Self::Character | Self::Celebrity)
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refined adapter document: the card plus what the refiner made of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterDoc {
    pub card: AdapterCard,
    /// Clean, task-oriented description (refiner output).
    pub description: String,
    /// Recommended LoRA weight (default 0.8; a range gives its midpoint).
    pub recommended_weight: f32,
    pub category: Category,
    /// The exact text the embedder saw.
    pub embedding_text: String,
    /// Which refiner produced it (`card`, `vlm:<model>`), for cache invalidation.
    pub refiner: String,
}

impl AdapterDoc {
    pub fn id(&self) -> &AdapterId {
        &self.card.id
    }
}
