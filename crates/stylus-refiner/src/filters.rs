//! The paper's catalog filters, each a switch in [`CatalogConfig`], each skip with a named reason.
//!
//! Stylus (`refiner/fetch_adapter_metadata.py`, `utils/blacklist.py`) keeps a Civitai model when
//! its type is `LORA`, it is not nsfw, and some version with base model "SD 1.5" has a
//! `.safetensors` file; its pre-filter also drops 59 hard-coded ids, models with at most two
//! sample images, titles with "slider" or "table rpg", and (unless characters are enabled) models
//! tagged `character` or `celebrity`. Here the last four are off by default: the image-count rule
//! would drop every card of the bundled 2023 dump (it carries at most one image per model), the
//! id list is the authors' and not public data, and characters are blocked at composition time
//! (`ComposerConfig::block_characters`) rather than removed from the index.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use stylus_core::{AdapterId, CatalogConfig};

use crate::civitai::CatalogEntry;

/// Why a catalog entry was not indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Catalog type not in `adapter_types` (e.g. `LoCon`, `Checkpoint`).
    AdapterType,
    /// Flagged nsfw and `allow_nsfw` is off.
    Nsfw,
    /// No "SD 1.5" version with a `.safetensors` file.
    NoSd15Safetensors,
    /// Listed in `blocked_ids`.
    BlockedId,
    /// At most `max_images_dropped` sample images.
    FewImages,
    /// The title contains a word of `blocked_title_words`.
    BlockedTitleWord,
    /// Tagged `character`/`celebrity` or flagged as a real person, with `drop_characters` on.
    Character,
    /// The same adapter id was already read (from an earlier file or line).
    Duplicate,
}

impl SkipReason {
    /// The snake_case name used in summaries and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AdapterType => "adapter_type",
            Self::Nsfw => "nsfw",
            Self::NoSd15Safetensors => "no_sd15_safetensors",
            Self::BlockedId => "blocked_id",
            Self::FewImages => "few_images",
            Self::BlockedTitleWord => "blocked_title_word",
            Self::Character => "character",
            Self::Duplicate => "duplicate",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Tags that mark a character or a real person (Civitai's category tags).
const CHARACTER_TAGS: &[&str] = &["character", "celebrity"];

/// The filters of one [`CatalogConfig`].
#[derive(Debug, Clone)]
pub struct CardFilter {
    config: CatalogConfig,
    blocked_words: Vec<String>,
}

impl CardFilter {
    pub fn new(config: &CatalogConfig) -> Self {
        Self {
            config: config.clone(),
            blocked_words: config
                .blocked_title_words
                .iter()
                .map(|w| w.trim().to_lowercase())
                .filter(|w| !w.is_empty())
                .collect(),
        }
    }

    /// The first filter the entry fails, in the paper's order; `None` keeps it.
    pub fn check(&self, entry: &CatalogEntry) -> Option<SkipReason> {
        let card = &entry.card;
        let c = &self.config;
        if !c
            .adapter_types
            .iter()
            .any(|t| t.eq_ignore_ascii_case(&card.adapter_type))
        {
            return Some(SkipReason::AdapterType);
        }
        if card.nsfw && !c.allow_nsfw {
            return Some(SkipReason::Nsfw);
        }
        if c.require_sd15_safetensors && !entry.has_sd15_safetensors {
            return Some(SkipReason::NoSd15Safetensors);
        }
        if let AdapterId::Civitai(id) = card.id
            && c.blocked_ids.contains(&id)
        {
            return Some(SkipReason::BlockedId);
        }
        if let Some(max) = c.max_images_dropped
            && card.image_count <= max
        {
            return Some(SkipReason::FewImages);
        }
        if !self.blocked_words.is_empty() {
            let title = card.title.to_lowercase();
            if self
                .blocked_words
                .iter()
                .any(|w| title.contains(w.as_str()))
            {
                return Some(SkipReason::BlockedTitleWord);
            }
        }
        if c.drop_characters && (card.poi || CHARACTER_TAGS.iter().any(|t| card.has_tag(t))) {
            return Some(SkipReason::Character);
        }
        None
    }

    /// Applies the filters and drops repeated ids (the first occurrence wins).
    pub fn apply(&self, entries: Vec<CatalogEntry>) -> Filtered {
        let mut kept = Vec::with_capacity(entries.len());
        let mut skipped = BTreeMap::new();
        let mut seen = HashSet::new();
        for entry in entries {
            let reason = self
                .check(&entry)
                .or_else(|| (!seen.insert(entry.card.id.clone())).then_some(SkipReason::Duplicate));
            match reason {
                Some(reason) => {
                    tracing::debug!(origin = %entry.origin, id = %entry.card.id, %reason, "skipped");
                    *skipped.entry(reason).or_insert(0) += 1;
                }
                None => kept.push(entry),
            }
        }
        Filtered { kept, skipped }
    }
}

/// The outcome of [`CardFilter::apply`].
#[derive(Debug, Default)]
pub struct Filtered {
    pub kept: Vec<CatalogEntry>,
    /// How many entries each filter removed.
    pub skipped: BTreeMap<SkipReason, usize>,
}

impl Filtered {
    /// Entries skipped for any reason.
    pub fn skipped_total(&self) -> usize {
        self.skipped.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use stylus_core::AdapterCard;

    use super::*;

    fn entry(id: u64, title: &str) -> CatalogEntry {
        let mut card = AdapterCard::new(AdapterId::Civitai(id), title, "LORA");
        card.image_count = 5;
        CatalogEntry {
            card,
            origin: format!("test:{id}"),
            has_sd15_safetensors: true,
        }
    }

    #[test]
    fn each_switch_names_its_reason() {
        let config = CatalogConfig {
            adapter_types: vec!["LORA".into(), "locon".into()],
            max_images_dropped: Some(2),
            blocked_title_words: vec!["Slider".into(), "table rpg".into()],
            drop_characters: true,
            blocked_ids: vec![9],
            ..CatalogConfig::default()
        };
        let filter = CardFilter::new(&config);
        let check = |e: &CatalogEntry| filter.check(e);

        assert_eq!(check(&entry(1, "ok")), None);
        let mut e = entry(1, "ok");
        e.card.adapter_type = "LoCon".into();
        assert_eq!(check(&e), None);
        e.card.adapter_type = "DoRA".into();
        assert_eq!(check(&e), Some(SkipReason::AdapterType));
        let mut e = entry(1, "ok");
        e.card.nsfw = true;
        assert_eq!(check(&e), Some(SkipReason::Nsfw));
        let mut e = entry(1, "ok");
        e.has_sd15_safetensors = false;
        assert_eq!(check(&e), Some(SkipReason::NoSd15Safetensors));
        assert_eq!(check(&entry(9, "ok")), Some(SkipReason::BlockedId));
        let mut e = entry(1, "ok");
        e.card.image_count = 2;
        assert_eq!(check(&e), Some(SkipReason::FewImages));
        assert_eq!(
            check(&entry(1, "Age SLIDER")),
            Some(SkipReason::BlockedTitleWord)
        );
        let mut e = entry(1, "ok");
        e.card.tags = vec!["Celebrity".into()];
        assert_eq!(check(&e), Some(SkipReason::Character));
        let mut e = entry(1, "ok");
        e.card.poi = true;
        assert_eq!(check(&e), Some(SkipReason::Character));
    }

    #[test]
    fn defaults_are_the_papers_core_filter() {
        let filter = CardFilter::new(&CatalogConfig::default());
        let mut e = entry(1, "Eye slider");
        e.card.image_count = 0;
        e.card.tags = vec!["character".into()];
        assert_eq!(filter.check(&e), None);
        e.card.adapter_type = "LoCon".into();
        assert_eq!(filter.check(&e), Some(SkipReason::AdapterType));
    }

    #[test]
    fn duplicates_keep_the_first() {
        let filter = CardFilter::new(&CatalogConfig::default());
        let mut second = entry(1, "second");
        second.origin = "later".into();
        let out = filter.apply(vec![entry(1, "first"), second, entry(2, "x")]);
        assert_eq!(out.kept.len(), 2);
        assert_eq!(out.kept[0].card.title, "first");
        assert_eq!(out.skipped[&SkipReason::Duplicate], 1);
        assert_eq!(out.skipped_total(), 1);
    }
}
