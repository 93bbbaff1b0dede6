//! What flows between retriever, composer and masker: candidates, topics, compositions, masks and
//! weighted adapters.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{AdapterDoc, AdapterFile, AdapterId, Category};

/// A retrieved adapter with its similarity to the prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub doc: Arc<AdapterDoc>,
    /// Higher is better (cosine similarity for dense retrievers).
    pub score: f32,
}

/// One ranking's say about a candidate: its rank there (from 1) and its score there.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub rank: usize,
    pub score: f32,
}

/// A candidate with the evidence behind its place: what the vector search (cosine or dot
/// product) and the BM25 search said about it, where they were consulted (`None`: not among
/// that ranking's results, or that ranking is not used).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExplainedCandidate {
    pub candidate: Candidate,
    pub vector: Option<Evidence>,
    pub bm25: Option<Evidence>,
}

/// Fuses rankings (best first, each with its weight) into the `k` best documents by reciprocal
/// rank fusion: a document's score is `sum over rankings of weight / (rrf_k + rank)`, rank counted
/// from 1, so rankings on different score scales need no calibration. Equal scores keep the order
/// of first appearance.
pub fn reciprocal_rank_fusion(
    rankings: &[(&[Arc<AdapterDoc>], f32)],
    rrf_k: f32,
    k: usize,
) -> Vec<Candidate> {
    let mut fused: HashMap<&AdapterId, (usize, f32, &Arc<AdapterDoc>)> = HashMap::new();
    let mut order = 0;
    for (ranking, weight) in rankings {
        for (rank, doc) in ranking.iter().enumerate() {
            let entry = fused.entry(doc.id()).or_insert_with(|| {
                order += 1;
                (order, 0.0, doc)
            });
            entry.1 += weight / (rrf_k + rank as f32 + 1.0);
        }
    }
    let mut out: Vec<(usize, f32, &Arc<AdapterDoc>)> = fused.into_values().collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out.into_iter()
        .take(k)
        .map(|(_, score, doc)| Candidate {
            doc: Arc::clone(doc),
            score,
        })
        .collect()
}

/// What a retriever searches with: the prompt's text and its embedding. Dense retrievers read the
/// vector, lexical ones the text, hybrids both.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Query<'a> {
    pub text: &'a str,
    pub vector: &'a [f32],
}

impl<'a> Query<'a> {
    pub fn new(text: &'a str, vector: &'a [f32]) -> Self {
        Self { text, vector }
    }

    /// A query given only as a vector (a lexical ranking then has no words to match).
    pub fn vector(vector: &'a [f32]) -> Self {
        Self { text: "", vector }
    }
}

/// Which adapters a retriever may return. Applied inside the search, so a filter never leaves fewer
/// than K results when K matching adapters exist.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RetrievalFilter {
    /// Only adapters for the SD 1.x family (adapters with an unknown base model pass).
    #[serde(default)]
    pub sd1_only: bool,
    #[serde(default)]
    pub blocked_ids: BTreeSet<AdapterId>,
    #[serde(default)]
    pub blocked_categories: BTreeSet<Category>,
    /// Adapters carrying any of these tags (case-insensitive) are dropped.
    #[serde(default)]
    pub blocked_tags: BTreeSet<String>,
    #[serde(default)]
    pub allow_nsfw: bool,
}

impl RetrievalFilter {
    /// True when the filter lets `doc` through.
    pub fn accepts(&self, doc: &AdapterDoc) -> bool {
        let card = &doc.card;
        if card.nsfw && !self.allow_nsfw {
            return false;
        }
        if self.sd1_only && card.base_model.as_ref().is_some_and(|b| !b.is_sd1()) {
            return false;
        }
        if self.blocked_ids.contains(&card.id) || self.blocked_categories.contains(&doc.category) {
            return false;
        }
        !card
            .tags
            .iter()
            .any(|t| self.blocked_tags.contains(&t.to_ascii_lowercase()))
    }

    /// True when the filter lets everything through (retrievers can skip per-item checks).
    pub fn is_pass_all(&self) -> bool {
        !self.sd1_only
            && self.blocked_ids.is_empty()
            && self.blocked_categories.is_empty()
            && self.blocked_tags.is_empty()
            && self.allow_nsfw
    }
}

/// A keyword topic cut from the prompt ("a man", "riding a cat", "in the rain").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topic {
    /// The topic as it appears in the prompt.
    pub text: String,
}

/// One topic and the adapters assigned to it (0..=k, each adapter at most once overall).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicAdapters {
    pub topic: Topic,
    pub adapters: Vec<Arc<AdapterDoc>>,
}

/// The composer's answer: the prompt's topics, in prompt order, with their adapters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Composition {
    pub topics: Vec<TopicAdapters>,
}

impl Composition {
    /// Number of adapters over all topics.
    pub fn adapter_count(&self) -> usize {
        self.topics.iter().map(|t| t.adapters.len()).sum()
    }
}

/// Which adapters of a composition are on: `active[topic][adapter]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Mask {
    pub active: Vec<Vec<bool>>,
}

impl Mask {
    /// Every adapter of `composition` on.
    pub fn all(composition: &Composition) -> Self {
        Self {
            active: composition
                .topics
                .iter()
                .map(|t| vec![true; t.adapters.len()])
                .collect(),
        }
    }

    /// Number of active adapters in `topic`.
    pub fn active_in_topic(&self, topic: usize) -> usize {
        self.active
            .get(topic)
            .map_or(0, |a| a.iter().filter(|&&on| on).count())
    }
}

/// How masks are built from a composition (the paper's `masking.py` strategies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[cfg_attr(feature = "clap", value(rename_all = "snake_case"))]
#[serde(rename_all = "snake_case")]
pub enum MaskStrategy {
    /// One mask, everything on.
    All,
    /// Every subset (empty included) of each topic's adapters, crossed over topics.
    #[default]
    OneHotLoras,
    /// Whole topics on or off, crossed over topics.
    OneHotConcepts,
}

impl MaskStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::OneHotLoras => "one_hot_loras",
            Self::OneHotConcepts => "one_hot_concepts",
        }
    }
}

impl std::str::FromStr for MaskStrategy {
    type Err = crate::StylusError;

    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "all" => Ok(Self::All),
            "one_hot_loras" => Ok(Self::OneHotLoras),
            "one_hot_concepts" => Ok(Self::OneHotConcepts),
            other => Err(crate::StylusError::InvalidArgument(format!(
                "unknown mask strategy `{other}` (expected all, one_hot_loras or one_hot_concepts)"
            ))),
        }
    }
}

/// An adapter with the weight it gets under one mask; what the merger and the A1111 prompt use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightedAdapter {
    pub id: AdapterId,
    pub title: String,
    pub alias: String,
    pub weight: f32,
    /// `None` for adapters given by path, which have no card.
    pub category: Option<Category>,
    pub trigger_words: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<AdapterFile>,
}

impl WeightedAdapter {
    pub fn new(doc: &AdapterDoc, weight: f32) -> Self {
        Self {
            id: doc.card.id.clone(),
            title: doc.card.title.clone(),
            alias: doc.card.a1111_alias(),
            weight,
            category: Some(doc.category),
            trigger_words: doc.card.trigger_words.clone(),
            file: doc.card.file.clone(),
        }
    }
}

/// The paper's weight rule: recommended weight x `base` / adapters active in the topic.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WeightPolicy {
    /// The 0.8 of the paper.
    pub base: f32,
    /// Divide by the number of adapters active in the same topic.
    pub split_within_topic: bool,
}

impl Default for WeightPolicy {
    fn default() -> Self {
        Self {
            base: 0.8,
            split_within_topic: true,
        }
    }
}

impl WeightPolicy {
    /// The weight of an adapter with `recommended` weight when `active_in_topic` adapters of its
    /// topic are on.
    pub fn weight(&self, recommended: f32, active_in_topic: usize) -> f32 {
        let share = if self.split_within_topic {
            active_in_topic.max(1) as f32
        } else {
            1.0
        };
        recommended * self.base / share
    }

    /// The active adapters of `mask`, weighted, in topic order.
    pub fn weighted(&self, composition: &Composition, mask: &Mask) -> Vec<WeightedAdapter> {
        let mut out = Vec::new();
        for (t, topic) in composition.topics.iter().enumerate() {
            let active = mask.active_in_topic(t);
            for (a, doc) in topic.adapters.iter().enumerate() {
                let on = mask
                    .active
                    .get(t)
                    .and_then(|m| m.get(a))
                    .copied()
                    .unwrap_or(false);
                if on {
                    out.push(WeightedAdapter::new(
                        doc,
                        self.weight(doc.recommended_weight, active),
                    ));
                }
            }
        }
        out
    }
}

impl WeightedAdapter {
    /// An adapter given by path (no card): alias and title are the file stem, the id its path.
    pub fn from_path(path: &std::path::Path, weight: f32) -> Self {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self {
            id: AdapterId::File(path.to_path_buf()),
            title: stem.clone(),
            alias: stem,
            weight,
            category: None,
            trigger_words: Vec::new(),
            file: None,
        }
    }
}
