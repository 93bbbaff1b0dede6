//! [`CardRefiner`]: the offline, deterministic refiner. It builds the document from the card alone
//! (no model, no network): a description from title, tags, trigger words, the cleaned description
//! and the sample prompts; the recommended weight by the paper's rule; a category from tags, then
//! text. The weight and category rules are public so the VLM refiner applies the same ones.

use std::sync::LazyLock;

use async_trait::async_trait;
use regex::Regex;
use serde::{Deserialize, Serialize};
use stylus_core::{AdapterCard, AdapterDoc, Category, Refiner, Result, strip_lora_tags};

use crate::html::truncate_chars;

/// The weight when neither the sample prompts nor the card text name one (the paper's 0.8).
pub const DEFAULT_WEIGHT: f32 = 0.8;
/// Recommended weights are clamped to this range: a negative or near-zero weight (detail
/// "reducers", `-2..2` ranges) is no use for composition, and above 1.5 images burn.
pub const MIN_WEIGHT: f32 = 0.1;
pub const MAX_WEIGHT: f32 = 1.5;

/// What text the embedder sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbeddingText {
    /// The paper's (`refiner/encoder.py`): an instruction, then title, description and tags.
    Paper,
    /// Ours: title, category, tags and trigger words first (short, high-signal, never cut by a
    /// 256-token encoder), then the description and (optionally) the cleaned sample prompts.
    #[default]
    Rich,
}

/// Settings of the [`CardRefiner`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CardRefinerOptions {
    pub embedding_text: EmbeddingText,
    /// Put the sample prompts (lora tags removed) into description and embedding text. The
    /// retrieval evaluation queries with each card's sample prompt, so it turns this off.
    pub include_sample_prompts: bool,
    /// Characters of the cleaned card description kept (the paper's composer cuts at 1,000).
    pub max_description_chars: usize,
    /// Sample prompts used, at most.
    pub max_sample_prompts: usize,
}

impl Default for CardRefinerOptions {
    fn default() -> Self {
        Self {
            embedding_text: EmbeddingText::Rich,
            include_sample_prompts: true,
            max_description_chars: 1000,
            max_sample_prompts: 3,
        }
    }
}

/// The offline refiner (refiner id `card`; options other than the default are part of the id so
/// stores refined differently are not mixed).
#[derive(Debug, Clone, Default)]
pub struct CardRefiner {
    options: CardRefinerOptions,
}

impl CardRefiner {
    pub fn new(options: CardRefinerOptions) -> Self {
        Self { options }
    }

    pub fn options(&self) -> &CardRefinerOptions {
        &self.options
    }

    /// The document of one card (what [`Refiner::refine`] returns, without the async).
    pub fn refine_card(&self, card: &AdapterCard) -> AdapterDoc {
        let description = self.description(card);
        let category = category(card);
        let embedding_text = match self.options.embedding_text {
            EmbeddingText::Paper => paper_embedding_text(card, &self.card_description(card)),
            EmbeddingText::Rich => self.rich_embedding_text(card, category),
        };
        AdapterDoc {
            card: card.clone(),
            description,
            recommended_weight: recommended_weight(card),
            category,
            embedding_text,
            refiner: self.id_string(),
        }
    }

    fn id_string(&self) -> String {
        let o = &self.options;
        // The `/2`: the weight rules changed (digits inside words, the range cap), so documents
        // refined by the first rules are refined again on the next index run.
        if *o == CardRefinerOptions::default() {
            return "card/2".to_string();
        }
        let text = match o.embedding_text {
            EmbeddingText::Paper => "paper",
            EmbeddingText::Rich => "rich",
        };
        format!(
            "card/2:{text}:prompts={}:desc={}:n={}",
            o.include_sample_prompts, o.max_description_chars, o.max_sample_prompts
        )
    }

    /// The cleaned card description, capped.
    fn card_description(&self, card: &AdapterCard) -> String {
        truncate_chars(
            &card.description.replace('\n', " "),
            self.options.max_description_chars,
        )
    }

    /// Sample prompts without lora tags, deduplicated, at most `max_sample_prompts`.
    fn clean_prompts(&self, card: &AdapterCard) -> Vec<String> {
        if !self.options.include_sample_prompts {
            return Vec::new();
        }
        let mut prompts: Vec<String> = Vec::new();
        for prompt in &card.sample_prompts {
            let clean = truncate_chars(&strip_lora_tags(prompt), 300);
            if !clean.is_empty() && !prompts.contains(&clean) {
                prompts.push(clean);
            }
            if prompts.len() == self.options.max_sample_prompts {
                break;
            }
        }
        prompts
    }

    /// The human-readable description: one line per fact.
    fn description(&self, card: &AdapterCard) -> String {
        let mut lines = vec![card.title.clone()];
        if !card.tags.is_empty() {
            lines.push(format!("Tags: {}.", card.tags.join(", ")));
        }
        if !card.trigger_words.is_empty() {
            lines.push(format!("Trigger words: {}.", card.trigger_words.join(", ")));
        }
        let text = self.card_description(card);
        if !text.is_empty() {
            lines.push(text);
        }
        let prompts = self.clean_prompts(card);
        if !prompts.is_empty() {
            lines.push(format!("Example prompts: {}", prompts.join(" | ")));
        }
        lines.join("\n")
    }

    fn rich_embedding_text(&self, card: &AdapterCard, category: Category) -> String {
        let mut parts = vec![format!("{} ({category})", card.title)];
        if !card.tags.is_empty() {
            parts.push(format!("Tags: {}", card.tags.join(", ")));
        }
        if !card.trigger_words.is_empty() {
            parts.push(format!("Trigger words: {}", card.trigger_words.join(", ")));
        }
        let text = self.card_description(card);
        if !text.is_empty() {
            parts.push(format!("Description: {text}"));
        }
        let prompts = self.clean_prompts(card);
        if !prompts.is_empty() {
            parts.push(format!("Example prompts: {}", prompts.join(" | ")));
        }
        parts.join(". ")
    }
}

#[async_trait]
impl Refiner for CardRefiner {
    fn id(&self) -> String {
        self.id_string()
    }

    async fn refine(&self, card: &AdapterCard) -> Result<AdapterDoc> {
        Ok(self.refine_card(card))
    }
}

/// The paper's embedding text (`refiner/encoder.py`), with `description` as given.
pub fn paper_embedding_text(card: &AdapterCard, description: &str) -> String {
    format!(
        "Convert Stable Diffusion finetuned adapter description into an embedding for search: \
         Title: {}; Description: {}; Tags: {};",
        card.title,
        description,
        card.tags.join(", ")
    )
}

/// The paper's weight rule: a `<lora:alias:w>` in the sample prompts overrides the card text; a
/// weight or range the card text mentions comes next (a range gives its midpoint); else 0.8.
/// A sample-prompt weight above the range the text recommends is capped at the range's top (a
/// showcase image pushed to 1.5 does not beat "use 0.3-0.7"). Clamped to [`MIN_WEIGHT`,
/// `MAX_WEIGHT`].
pub fn recommended_weight(card: &AdapterCard) -> f32 {
    let alias = card.a1111_alias();
    let range = weight_range_from_text(&card.description);
    match (weight_from_prompts(&card.sample_prompts, &alias), range) {
        (Some(weight), Some((_, high))) => weight.min(high),
        (Some(weight), None) => weight,
        (None, Some((low, high))) => round_weight((low + high) / 2.0),
        (None, None) => DEFAULT_WEIGHT,
    }
    .clamp(MIN_WEIGHT, MAX_WEIGHT)
}

static LORA_TAG: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)<(?:lora|lyco):([^:<>]+):\s*(-?\d+(?:\.\d+)?|-?\.\d+)\s*(?::[^<>]*)?>")
        .expect("valid regex")
});

/// The weight of `<lora:alias:w>` tags in the prompts: tags naming `alias` (case-insensitive), or
/// every tag when all of them name one single adapter (creators rename files). Several weights
/// give their mean. `None` when no tag applies.
pub fn weight_from_prompts(prompts: &[String], alias: &str) -> Option<f32> {
    let tags: Vec<(String, f32)> = prompts
        .iter()
        .flat_map(|p| LORA_TAG.captures_iter(p))
        .filter_map(|c| {
            let weight: f32 = c[2].parse().ok()?;
            weight
                .is_finite()
                .then(|| (c[1].trim().to_lowercase(), weight))
        })
        .collect();
    let alias = alias.trim().to_lowercase();
    let mut weights: Vec<f32> = tags
        .iter()
        .filter(|(name, _)| *name == alias)
        .map(|(_, w)| *w)
        .collect();
    if weights.is_empty() {
        let first = tags.first()?;
        if tags.iter().all(|(name, _)| *name == first.0) {
            weights = tags.iter().map(|(_, w)| *w).collect();
        }
    }
    (!weights.is_empty()).then(|| round_weight(weights.iter().sum::<f32>() / weights.len() as f32))
}

static TEXT_WEIGHT: LazyLock<Regex> = LazyLock::new(|| {
    // A weight keyword, a short gap without digits, then a number or a range. "recommend" must be
    // followed almost directly by the number: "recommended 30 steps" is not a weight. The gap
    // ends outside a word, so the "2" of "weight for txt2img" is no weight.
    Regex::new(concat!(
        r"(?i)(?:(?:weight|strength|multiplier|权重|强度)(?:[^\d\n.\-]{0,29}[^\w\n.\-])?",
        r"|recommend(?:ed)?[:\s]{0,3})",
        r"(-?\d*\.?\d+)(?:\s*(?:-|~|～|–|to)\s*(-?\d*\.?\d+))?"
    ))
    .expect("valid regex")
});

/// A weight the card text mentions ("weight 0.6-0.8" gives 0.7, "strength: 0.5"). Numbers
/// outside (0, 2] are not LoRA weights (steps, CFG, versions) and are ignored, as are ranges whose
/// midpoint is not positive.
pub fn weight_from_text(text: &str) -> Option<f32> {
    weight_range_from_text(text).map(|(low, high)| round_weight((low + high) / 2.0))
}

/// The weight range the card text mentions, `(low, high)`; a single weight is `(w, w)`. Same
/// rules as [`weight_from_text`].
pub fn weight_range_from_text(text: &str) -> Option<(f32, f32)> {
    TEXT_WEIGHT.captures_iter(text).find_map(|c| {
        let low: f32 = c[1].parse().ok()?;
        let (low, high) = match c.get(2).and_then(|m| m.as_str().parse::<f32>().ok()) {
            Some(high) if (-2.0..=2.0).contains(&high) && (-2.0..=2.0).contains(&low) => {
                (low.min(high), low.max(high))
            }
            Some(_) => return None,
            None => (low, low),
        };
        let mid = (low + high) / 2.0;
        (mid > 0.0 && mid <= 2.0).then_some((low, high))
    })
}

/// Weights are kept to two decimals (what cards and A1111 prompts write).
fn round_weight(weight: f32) -> f32 {
    (weight * 100.0).round() / 100.0
}

/// Tag synonyms per category, checked in this order (people first: the composer blocks them, so
/// missing one costs more than a wrong style/concept call).
const CATEGORY_TAGS: &[(Category, &[&str])] = &[
    (
        Category::Celebrity,
        &[
            "celebrity",
            "celeb",
            "real person",
            "actress",
            "actor",
            "singer",
            "influencer",
            "idol",
            "kpop idol",
        ],
    ),
    (
        Category::Character,
        &[
            "character",
            "characters",
            "game character",
            "anime character",
            "video game character",
            "cartoon character",
            "original character",
            "oc",
            "waifu",
            "vtuber",
        ],
    ),
    (
        Category::Clothing,
        &[
            "clothing",
            "clothes",
            "outfit",
            "outfits",
            "costume",
            "fashion",
            "dress",
            "uniform",
            "armor",
            "cosplay",
            "lingerie",
            "swimsuit",
            "hat",
            "shoes",
            "accessories",
            "accessory",
        ],
    ),
    (Category::Pose, &["pose", "poses", "posing", "gesture"]),
    (Category::Action, &["action", "actions"]),
    (
        Category::Background,
        &[
            "background",
            "backgrounds",
            "scenery",
            "landscape",
            "environment",
            "location",
            "interior",
            "landscapes",
        ],
    ),
    (
        Category::Building,
        &[
            "building",
            "buildings",
            "architecture",
            "house",
            "city",
            "castle",
        ],
    ),
    (
        Category::Vehicle,
        &[
            "vehicle",
            "vehicles",
            "car",
            "cars",
            "motorcycle",
            "aircraft",
            "airplane",
            "ship",
            "mecha",
            "tank",
            "train",
        ],
    ),
    (
        Category::Animal,
        &[
            "animal", "animals", "cat", "dog", "bird", "horse", "dragon", "creature", "fish",
        ],
    ),
    (
        Category::Object,
        &[
            "object", "objects", "item", "items", "assets", "weapon", "weapons", "food", "prop",
            "props",
        ],
    ),
    (
        Category::Style,
        &[
            "style",
            "art style",
            "artstyle",
            "style lora",
            "styles",
            "artist",
            "art",
            "painting",
            "illustration",
            "aesthetic",
            "photography",
            "3d",
            "render",
        ],
    ),
    (
        Category::Concept,
        &[
            "concept", "concepts", "tool", "detail", "lighting", "effect",
        ],
    ),
];

static TEXT_CATEGORY: LazyLock<Vec<(Category, Regex)>> = LazyLock::new(|| {
    let rule = |category, pattern: &str| {
        (
            category,
            Regex::new(&format!(r"(?i)\b(?:{pattern})\b")).expect("valid regex"),
        )
    };
    vec![
        rule(Category::Celebrity, "actress|actor|celebrity|singer"),
        rule(
            Category::Style,
            "style|art ?style|artstyle|painting|aesthetic",
        ),
        rule(
            Category::Clothing,
            "outfit|dress|uniform|costume|clothes|clothing|armou?r|bikini|swimsuit|kimono|hoodie",
        ),
        rule(Category::Pose, "pose|poses|posing"),
        rule(Category::Background, "background|scenery|landscape"),
        rule(Category::Building, "building|architecture|castle|temple"),
        rule(
            Category::Vehicle,
            "car|vehicle|motorcycle|mecha|aircraft|spaceship",
        ),
        rule(Category::Animal, "cat|dog|animal|bird|horse|dragon"),
        rule(Category::Character, "character|girl|boy|waifu"),
        rule(Category::Object, "object|item|weapon|sword"),
    ]
});

/// The adapter's category: Civitai tags first (people, then the concrete categories, then style
/// and concept), a real-person flag next, then keywords in the title and finally the
/// description; `Concept` when nothing matches.
pub fn category(card: &AdapterCard) -> Category {
    for (category, tags) in CATEGORY_TAGS {
        if card
            .tags
            .iter()
            .any(|t| tags.iter().any(|s| t.trim().eq_ignore_ascii_case(s)))
        {
            return *category;
        }
    }
    if card.poi {
        return Category::Celebrity;
    }
    category_from_text(&card.title)
        .or_else(|| category_from_text(&card.description))
        .unwrap_or(Category::Concept)
}

/// The first category whose keywords occur in `text`, if any.
pub fn category_from_text(text: &str) -> Option<Category> {
    TEXT_CATEGORY
        .iter()
        .find(|(_, re)| re.is_match(text))
        .map(|(category, _)| *category)
}

#[cfg(test)]
mod tests {
    use stylus_core::{AdapterFile, AdapterId};

    use super::*;

    fn card() -> AdapterCard {
        let mut card = AdapterCard::new(AdapterId::Civitai(1), "Detail Tweaker", "LORA");
        card.file = Some(AdapterFile {
            name: "add_detail.safetensors".into(),
            ..AdapterFile::default()
        });
        card.alias = Some("add_detail".into());
        card
    }

    #[test]
    fn prompt_tag_overrides_text_and_matches_alias() {
        let mut c = card();
        c.description = "Use weight 0.6-0.8.".into();
        assert!((recommended_weight(&c) - 0.7).abs() < 1e-6);
        c.sample_prompts = vec!["a cat, <lora:other:0.3>, <lora:ADD_DETAIL:0.65>".into()];
        assert!((recommended_weight(&c) - 0.65).abs() < 1e-6);
        // A showcase weight above the range the text recommends is capped at its top.
        c.sample_prompts = vec!["a cat, <lora:ADD_DETAIL:1.2>".into()];
        assert!((recommended_weight(&c) - 0.8).abs() < 1e-6);
        c.description = String::new();
        assert!((recommended_weight(&c) - 1.2).abs() < 1e-6);
        c.description = "Use weight 0.6-0.8.".into();
        // Two different tags, none the alias: ambiguous, the text decides.
        c.sample_prompts = vec!["<lora:a:0.3> <lora:b:0.5>".into()];
        assert!((recommended_weight(&c) - 0.7).abs() < 1e-6);
        // One tag under another name (renamed file): it counts.
        c.sample_prompts = vec![
            "<lora:add_detail_v2:0.4>, x".into(),
            "<lora:add_detail_v2:0.6>".into(),
        ];
        assert!((recommended_weight(&c) - 0.5).abs() < 1e-6);
    }

    #[test]
    fn text_weights_ranges_and_noise() {
        assert_eq!(weight_from_text("strength: 0.5 works"), Some(0.5));
        assert_eq!(weight_from_text("Recommended weight 0.6~0.8"), Some(0.7));
        assert_eq!(
            weight_from_text("use a weight between 0.4 and 1"),
            Some(0.4)
        );
        assert_eq!(weight_from_text("权重0.7"), Some(0.7));
        assert_eq!(
            weight_from_text("<lora:x:(recommend0.4-0.7 here)>"),
            Some(0.55)
        );
        assert_eq!(weight_from_text("recommended 30 steps, cfg 7"), None);
        assert_eq!(weight_from_text("weight up/down to 2/-2"), Some(2.0));
        assert_eq!(weight_from_text("weight -2 to 2"), None);
        assert_eq!(weight_from_text("trained 10 epochs"), None);
        // A digit inside a word is no weight; the real range further on is found.
        assert_eq!(
            weight_from_text("LORA weight for txt2img: reccomended 0.3-0.7. weight 0.5"),
            Some(0.5)
        );
        assert_eq!(weight_from_text("LORA weight for txt2img: 0.3-0.7"), None);
        assert_eq!(recommended_weight(&card()), DEFAULT_WEIGHT);
        let mut c = card();
        c.sample_prompts = vec!["<lora:add_detail:-1>".into()];
        assert_eq!(recommended_weight(&c), MIN_WEIGHT);
        c.sample_prompts = vec!["<lora:add_detail:3>".into()];
        assert_eq!(recommended_weight(&c), MAX_WEIGHT);
    }

    #[test]
    fn categories_from_tags_then_text() {
        let mut c = card();
        c.tags = vec!["anime".into(), "Style".into()];
        assert_eq!(category(&c), Category::Style);
        c.tags.push("character".into());
        assert_eq!(category(&c), Category::Character);
        c.tags.push("celebrity".into());
        assert_eq!(category(&c), Category::Celebrity);
        c.tags = vec!["buildings".into()];
        assert_eq!(category(&c), Category::Building);
        c.tags = vec!["anime".into()];
        c.title = "School uniform".into();
        assert_eq!(category(&c), Category::Clothing);
        c.title = "Nothing".into();
        c.description = "A watercolor painting look".into();
        assert_eq!(category(&c), Category::Style);
        c.description.clear();
        assert_eq!(category(&c), Category::Concept);
        c.poi = true;
        assert_eq!(category(&c), Category::Celebrity);
    }

    #[test]
    fn texts_are_built_and_prompts_can_be_left_out() {
        let mut c = card();
        c.tags = vec!["detailed".into()];
        c.trigger_words = vec!["trig".into()];
        c.description = "Line one\nline two".into();
        c.sample_prompts = vec!["a girl, <lora:add_detail:1>".into()];
        let doc = CardRefiner::default().refine_card(&c);
        assert_eq!(doc.refiner, "card/2");
        assert_eq!(
            doc.description,
            "Detail Tweaker\nTags: detailed.\nTrigger words: trig.\nLine one line two\nExample prompts: a girl,"
        );
        assert_eq!(
            doc.embedding_text,
            "Detail Tweaker (concept). Tags: detailed. Trigger words: trig. Description: Line one line two. Example prompts: a girl,"
        );
        assert_eq!(doc.recommended_weight, 1.0);

        let no_prompts = CardRefiner::new(CardRefinerOptions {
            include_sample_prompts: false,
            ..CardRefinerOptions::default()
        });
        let doc = no_prompts.refine_card(&c);
        assert!(!doc.embedding_text.contains("girl") && !doc.description.contains("girl"));
        assert_eq!(
            doc.recommended_weight, 1.0,
            "the weight rule still reads the prompts"
        );
        assert_ne!(doc.refiner, "card/2");

        let paper = CardRefiner::new(CardRefinerOptions {
            embedding_text: EmbeddingText::Paper,
            ..CardRefinerOptions::default()
        });
        assert_eq!(
            paper.refine_card(&c).embedding_text,
            "Convert Stable Diffusion finetuned adapter description into an embedding for search: \
             Title: Detail Tweaker; Description: Line one line two; Tags: detailed;"
        );
    }
}
