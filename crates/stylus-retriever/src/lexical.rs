//! `LexicalIndex`: BM25 over the adapter documents' fields, the lexical half of hybrid retrieval.
//!
//! Fields are weighted before BM25 saturation (a simplified BM25F): a word in the title or the
//! tags says more about what an adapter does than the same word somewhere in a long description.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use stylus_core::{AdapterDoc, Result, RetrievalFilter};

use crate::exact::check_k;
use crate::filter::FilterCache;
use crate::select::{Hit, top_k};

/// BM25 parameters and field weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LexicalConfig {
    /// Term-frequency saturation.
    pub k1: f32,
    /// Length normalization (0: none, 1: full).
    pub b: f32,
    pub title_weight: f32,
    pub tags_weight: f32,
    pub trigger_words_weight: f32,
    pub description_weight: f32,
}

impl Default for LexicalConfig {
    fn default() -> Self {
        Self {
            k1: 1.2,
            b: 0.75,
            title_weight: 3.0,
            tags_weight: 2.0,
            trigger_words_weight: 2.0,
            description_weight: 1.0,
        }
    }
}

/// Words that carry no subject in SD prompts or card texts.
const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "in", "is", "it", "its", "of",
    "on", "or", "that", "the", "this", "to", "with", "you", "your", "i", "my", "me", "we", "can",
    "will", "use", "used", "using", "lora", "model", "version", "v1", "v2", "v3",
];

/// Lower-case word tokens: letters and digits, stopwords and single characters dropped, a plural
/// `s` removed so "cats" meets "cat".
pub fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| w.chars().count() > 1 && !STOPWORDS.contains(&w.as_str()))
        .map(|w| match w.strip_suffix('s') {
            Some(stem) if stem.len() > 2 && !stem.ends_with('s') => stem.to_string(),
            _ => w,
        })
        .collect()
}

/// An inverted index with BM25 scoring.
#[derive(Debug)]
pub struct LexicalIndex {
    docs: Vec<Arc<AdapterDoc>>,
    config: LexicalConfig,
    /// Per term: (document, weighted term frequency).
    postings: HashMap<String, Vec<(u32, f32)>, foldhash::fast::RandomState>,
    /// Weighted length of each document.
    lengths: Vec<f32>,
    mean_length: f32,
    filters: FilterCache,
}

impl LexicalIndex {
    pub fn build(docs: Vec<Arc<AdapterDoc>>, config: LexicalConfig) -> Self {
        use rayon::prelude::*;
        // Tokenizing is most of the work (it runs on every store open): documents in parallel,
        // then one merge in document order, so postings are sorted by document.
        let per_doc: Vec<(Vec<(String, f32)>, f32)> = docs
            .par_iter()
            .map(|doc| {
                let mut tf: HashMap<String, f32, foldhash::fast::RandomState> = HashMap::default();
                let card = &doc.card;
                let fields = [
                    (card.title.as_str(), config.title_weight),
                    (&card.tags.join(" "), config.tags_weight),
                    (&card.trigger_words.join(" "), config.trigger_words_weight),
                    (doc.description.as_str(), config.description_weight),
                ];
                let mut length = 0.0;
                for (text, weight) in fields {
                    for token in tokens(text) {
                        *tf.entry(token).or_default() += weight;
                        length += weight;
                    }
                }
                (tf.into_iter().collect(), length)
            })
            .collect();
        let mut postings: HashMap<String, Vec<(u32, f32)>, foldhash::fast::RandomState> =
            HashMap::default();
        let mut lengths = Vec::with_capacity(docs.len());
        for (i, (tf, length)) in per_doc.into_iter().enumerate() {
            for (term, f) in tf {
                postings.entry(term).or_default().push((i as u32, f));
            }
            lengths.push(length);
        }
        let mean_length = if lengths.is_empty() {
            1.0
        } else {
            (lengths.iter().sum::<f32>() / lengths.len() as f32).max(1e-6)
        };
        Self {
            docs,
            config,
            postings,
            lengths,
            mean_length,
            filters: FilterCache::default(),
        }
    }

    pub fn docs(&self) -> &[Arc<AdapterDoc>] {
        &self.docs
    }

    /// The `k` best documents for `text` passing `filter`, best first. Documents sharing no word
    /// with the query are not returned, so there may be fewer than `k`.
    pub fn search(&self, text: &str, k: usize, filter: &RetrievalFilter) -> Result<Vec<Hit>> {
        check_k(k)?;
        let mut terms = tokens(text);
        terms.sort_unstable();
        terms.dedup();
        let n = self.docs.len() as f32;
        let (k1, b) = (self.config.k1, self.config.b);
        let mut scores = vec![0f32; self.docs.len()];
        for term in &terms {
            let Some(list) = self.postings.get(term) else {
                continue;
            };
            let df = list.len() as f32;
            let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
            for &(doc, tf) in list {
                let norm = k1 * (1.0 - b + b * self.lengths[doc as usize] / self.mean_length);
                scores[doc as usize] += idf * tf * (k1 + 1.0) / (tf + norm);
            }
        }
        let mask = self.filters.mask(&self.docs, filter);
        let hits: Vec<Hit> = scores
            .into_iter()
            .enumerate()
            .filter(|&(i, s)| s > 0.0 && mask.as_ref().is_none_or(|m| m.accepts(i)))
            .map(|(index, score)| Hit { index, score })
            .collect();
        Ok(top_k(hits, k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stylus_core::{AdapterCard, AdapterId, Category};

    fn doc(id: u64, title: &str, tags: &[&str], description: &str) -> Arc<AdapterDoc> {
        let mut card = AdapterCard::new(AdapterId::Civitai(id), title, "LORA");
        card.tags = tags.iter().map(|t| t.to_string()).collect();
        Arc::new(AdapterDoc {
            description: description.into(),
            recommended_weight: 0.8,
            category: Category::Concept,
            embedding_text: String::new(),
            refiner: "test".into(),
            card,
        })
    }

    #[test]
    fn tokens_drop_stopwords_and_plurals() {
        assert_eq!(
            tokens("The Cats, in 3D! <lora:x:0.5> glass"),
            ["cat", "3d", "glass"]
        );
    }

    #[test]
    fn title_and_tag_matches_outrank_description_mentions() {
        let docs = vec![
            doc(
                1,
                "Watercolor style",
                &["style", "painting"],
                "soft paper texture",
            ),
            doc(
                2,
                "Cyberpunk city",
                &["city"],
                "neon streets, a watercolor touch",
            ),
            doc(3, "Cute cats", &["animal", "cat"], "fluffy"),
        ];
        let index = LexicalIndex::build(docs, LexicalConfig::default());
        let all = RetrievalFilter {
            allow_nsfw: true,
            ..Default::default()
        };
        let hits = index
            .search("a watercolor painting of cats", 10, &all)
            .unwrap();
        let order: Vec<usize> = hits.iter().map(|h| h.index).collect();
        assert_eq!(order, vec![0, 2, 1]);
        assert!(index.search("zeppelin", 10, &all).unwrap().is_empty());
        let no_cats = RetrievalFilter {
            blocked_ids: [AdapterId::Civitai(3)].into(),
            ..all
        };
        assert!(index.search("cats", 10, &no_cats).unwrap().is_empty());
        assert!(
            index
                .search("cats", 0, &RetrievalFilter::default())
                .is_err()
        );
    }
}
