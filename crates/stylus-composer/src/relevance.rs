//! The relevance model: how likely a candidate that fits a topic is one the prompt wants.
//!
//! The [`crate::LocalComposer`]'s rules say which topic a candidate could serve; this model says
//! whether it should. It is a logistic model over evidence the composer already has: the
//! candidate's place in the reranked retrieval, how much of its name the prompt says, how much
//! of the prompt its name, tags and trigger words say, its best (topic, candidate) match, its
//! category and its popularity. "No adapter" is a normal answer: a topic whose best candidate
//! scores below the threshold gets none.
//!
//! The weights were fitted by `tools/fit_relevance.py` on the PartiPrompts development set
//! (`stylus eval selection --details` writes the evidence of every candidate, the script fits an
//! L2-regularised logistic regression against the reference composer's picks and chooses the
//! two thresholds by five-fold cross-validation over prompts); docs/benchmarks.md, "Selection",
//! has the procedure and the cross-validated numbers. Refit them when the features change.

use serde::Serialize;
use stylus_core::Category;

/// What the composer knows about one candidate that fits a topic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    /// Place in the reranked candidates, 0 first.
    pub rank: usize,
    /// Share of the candidate's name that the prompt says.
    pub name_said: f32,
    /// Share of the prompt's topic words that the name says.
    pub topic_said: f32,
    /// Share of the prompt's topic words found in the candidate's tags.
    pub tags_said: f32,
    /// Share of the prompt's topic words found in the candidate's trigger words.
    pub triggers_said: f32,
    /// The candidate's best (topic, candidate) score under the composer's rules.
    pub pair_score: f32,
    pub category: Category,
    /// Civitai downloads (0 for a local file).
    pub downloads: u64,
}

/// Names of [`Evidence::features`], in order (for the fitting script and reports).
pub const FEATURE_NAMES: [&str; 20] = [
    "rank_prior",
    "log_rank",
    "name_said",
    "topic_said",
    "tags_said",
    "triggers_said",
    "pair_score",
    "popularity",
    "style",
    "character",
    "celebrity",
    "clothing",
    "concept",
    "pose",
    "background",
    "building",
    "vehicle",
    "animal",
    "object",
    "action",
];

impl Evidence {
    /// The model's inputs, in the order of [`FEATURE_NAMES`].
    pub fn features(&self) -> [f32; 20] {
        let rank = self.rank as f32;
        let mut features = [0.0; 20];
        features[0] = 60.0 / (60.0 + rank);
        features[1] = (1.0 + rank).ln();
        features[2] = self.name_said;
        features[3] = self.topic_said;
        features[4] = self.tags_said;
        features[5] = self.triggers_said;
        features[6] = self.pair_score;
        // log10 of downloads over 6: 1 for a million.
        features[7] = (1.0 + self.downloads as f32).log10() / 6.0;
        let category = Category::ALL
            .iter()
            .position(|c| *c == self.category)
            .unwrap_or(0);
        features[8 + category] = 1.0;
        features
    }

    /// The model's log-odds that the prompt wants this candidate.
    pub fn relevance(&self) -> f32 {
        BIAS + self
            .features()
            .iter()
            .zip(WEIGHTS)
            .map(|(x, w)| x * w)
            .sum::<f32>()
    }
}

/// Fitted by `tools/fit_relevance.py` (see the module docs). What they say, in words: a place
/// high in the reranked retrieval, a name the prompt says and tags or trigger words that say the
/// prompt's words are evidence; animals and backgrounds are wanted more often than clothing,
/// buildings or concepts; characters almost never (they pass the composer's people rule only
/// when asked for); a name that covers many topic words is less often wanted than its coverage
/// of the prompt suggests (it is a scene adapter that takes over the image).
const BIAS: f32 = -1.858;
const WEIGHTS: [f32; 20] = [
    0.483, -0.800, 1.359, -0.794, 1.002, 0.883, -0.552, 0.110, 0.021, -1.028, 0.000, 0.149, -0.470,
    -0.064, 0.504, -0.620, 0.340, 1.403, -0.048, -0.185,
];

/// The default least relevance of a composition's first adapter
/// ([`crate::LocalComposer::with_min_relevance`])...
pub const DEFAULT_MIN_RELEVANCE_FIRST: f32 = -3.1;
/// ...and of each further one: an extra adapter costs image quality, so it needs more evidence.
pub const DEFAULT_MIN_RELEVANCE_NEXT: f32 = -2.5;

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence() -> Evidence {
        Evidence {
            rank: 3,
            name_said: 0.5,
            topic_said: 0.5,
            tags_said: 0.5,
            triggers_said: 0.0,
            pair_score: 1.0,
            category: Category::Animal,
            downloads: 1000,
        }
    }

    #[test]
    fn features_follow_their_names() {
        let features = evidence().features();
        assert_eq!(features.len(), FEATURE_NAMES.len());
        let at = |name: &str| features[FEATURE_NAMES.iter().position(|n| *n == name).unwrap()];
        assert_eq!(at("name_said"), 0.5);
        assert_eq!(at("animal"), 1.0);
        assert_eq!(at("style"), 0.0);
        assert!(
            (at("popularity") - 0.5).abs() < 1e-3,
            "{}",
            at("popularity")
        );
        assert!((at("log_rank") - 4f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn more_evidence_is_more_relevance() {
        let base = evidence();
        let better_rank = Evidence {
            rank: 0,
            ..base.clone()
        };
        let named = Evidence {
            name_said: 1.0,
            ..base.clone()
        };
        let tagged = Evidence {
            tags_said: 1.0,
            ..base.clone()
        };
        let character = Evidence {
            category: Category::Character,
            ..base.clone()
        };
        assert!(better_rank.relevance() > base.relevance());
        assert!(named.relevance() > base.relevance());
        assert!(tagged.relevance() > base.relevance());
        assert!(character.relevance() < base.relevance());
        const { assert!(DEFAULT_MIN_RELEVANCE_NEXT > DEFAULT_MIN_RELEVANCE_FIRST) };
    }
}
