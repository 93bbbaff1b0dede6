//! Hybrid retrieval: a dense ranking and the BM25 ranking fused by reciprocal rank fusion (RRF).
//!
//! RRF needs no score calibration between the two (cosines and BM25 scores live on different
//! scales): a document's fused score is `sum over rankings of weight / (rrf_k + rank)`, rank
//! counted from 1. A document missing from one ranking just gets nothing from it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
pub use stylus_core::reciprocal_rank_fusion;

use stylus_core::{
    AdapterDoc, AdapterId, Candidate, Evidence, ExplainedCandidate, Query, Result, RetrievalFilter,
    RetrievalMode, SearchIndex,
};

use crate::exact::check_k;
use crate::lexical::{LexicalConfig, LexicalIndex};

/// How the two rankings are fused.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FusionConfig {
    /// The RRF constant: larger values flatten the advantage of the very first ranks.
    pub rrf_k: f32,
    pub dense_weight: f32,
    pub lexical_weight: f32,
    /// How deep each ranking is read before fusing (at least the K asked for).
    pub depth: usize,
}

impl Default for FusionConfig {
    fn default() -> Self {
        Self {
            rrf_k: 60.0,
            dense_weight: 1.0,
            // Tuned on the Civitai development set: BM25 is the stronger ranking there.
            lexical_weight: 2.0,
            depth: 300,
        }
    }
}

/// A dense retriever and a lexical index over the same documents, fused.
pub struct HybridRetriever {
    dense: Arc<dyn SearchIndex>,
    lexical: LexicalIndex,
    fusion: FusionConfig,
}

impl std::fmt::Debug for HybridRetriever {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridRetriever")
            .field("documents", &self.dense.len())
            .field("fusion", &self.fusion)
            .finish_non_exhaustive()
    }
}

impl HybridRetriever {
    pub fn new(dense: Arc<dyn SearchIndex>, lexical: LexicalIndex, fusion: FusionConfig) -> Self {
        Self {
            dense,
            lexical,
            fusion,
        }
    }

    /// BM25 alone: the dense ranking gets no weight and only fills the list past the documents
    /// that share a word with the prompt (so K is never starved by a short prompt).
    pub fn bm25_only(dense: Arc<dyn SearchIndex>, lexical: LexicalIndex) -> Self {
        let fusion = FusionConfig {
            dense_weight: 0.0,
            ..FusionConfig::default()
        };
        Self::new(dense, lexical, fusion)
    }
}

/// `dense` as the config's `retriever.mode` asks: alone, or with BM25 over `docs` (the
/// documents `dense` searches), fused. `dense_is_lexical` says whether its vectors are lexical
/// (hashed TF-IDF), which is what [`RetrievalMode::Auto`] decides on.
pub fn with_mode(
    mode: RetrievalMode,
    dense: Arc<dyn SearchIndex>,
    docs: Vec<Arc<AdapterDoc>>,
    dense_is_lexical: bool,
) -> Arc<dyn SearchIndex> {
    let lexical =
        || Ok::<_, std::convert::Infallible>(LexicalIndex::build(docs, LexicalConfig::default()));
    match with_mode_from(mode, dense, dense_is_lexical, lexical) {
        Ok(retriever) => retriever,
        Err(never) => match never {},
    }
}

/// [`with_mode`] with the BM25 index from `lexical` (e.g. postings saved in a store), called
/// only when the mode uses BM25.
pub fn with_mode_from<E>(
    mode: RetrievalMode,
    dense: Arc<dyn SearchIndex>,
    dense_is_lexical: bool,
    lexical: impl FnOnce() -> std::result::Result<LexicalIndex, E>,
) -> std::result::Result<Arc<dyn SearchIndex>, E> {
    Ok(match mode {
        RetrievalMode::Dense => dense,
        RetrievalMode::Bm25 => Arc::new(HybridRetriever::bm25_only(dense, lexical()?)),
        RetrievalMode::Auto if dense_is_lexical => {
            Arc::new(HybridRetriever::bm25_only(dense, lexical()?))
        }
        RetrievalMode::Hybrid | RetrievalMode::Auto => Arc::new(HybridRetriever::new(
            dense,
            lexical()?,
            FusionConfig::default(),
        )),
    })
}

impl HybridRetriever {
    /// [`SearchIndex::retrieve`] with no dense weight, reading each ranking only as deep as the
    /// result needs: the fused list is the first `k` BM25 hits, then dense hits that are not
    /// among them, so BM25 to `k` and the vectors to `k` plus the BM25 hits give the same list
    /// as reading both to the fusion depth (tested), at a fraction of the cost when the pipeline
    /// runs one search per topic.
    fn retrieve_lexical_first(
        &self,
        query: Query<'_>,
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<Candidate>> {
        check_k(k)?;
        let docs = self.lexical.docs();
        let lexical: Vec<Arc<AdapterDoc>> = self
            .lexical
            .search(query.text, k, filter)?
            .iter()
            .map(|h| Arc::clone(&docs[h.index]))
            .collect();
        let dense: Vec<Arc<AdapterDoc>> = if lexical.len() < k {
            self.dense
                .retrieve(query, k + lexical.len(), filter)?
                .into_iter()
                .map(|c| c.doc)
                .collect()
        } else {
            Vec::new()
        };
        let rankings: [(&[Arc<AdapterDoc>], f32); 2] = [
            (&lexical, self.fusion.lexical_weight),
            (&dense, self.fusion.dense_weight),
        ];
        Ok(reciprocal_rank_fusion(&rankings, self.fusion.rrf_k, k))
    }
}

impl SearchIndex for HybridRetriever {
    fn dim(&self) -> usize {
        self.dense.dim()
    }

    fn len(&self) -> usize {
        self.dense.len()
    }

    /// The `k` best documents for the query's text (BM25) and vector (dense retriever), both
    /// filtered inside their search. Scores are RRF scores, not cosines.
    fn retrieve(
        &self,
        query: Query<'_>,
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<Candidate>> {
        if self.fusion.dense_weight == 0.0 && self.fusion.lexical_weight > 0.0 {
            return self.retrieve_lexical_first(query, k, filter);
        }
        Ok(self
            .retrieve_explained(query, k, filter)?
            .into_iter()
            .map(|e| e.candidate)
            .collect())
    }

    /// The fused ranking, each candidate with its rank and score in the vector search and in
    /// BM25 (both read to the fusion depth).
    fn retrieve_explained(
        &self,
        query: Query<'_>,
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<ExplainedCandidate>> {
        check_k(k)?;
        let depth = self.fusion.depth.max(k);
        let dense_hits = self.dense.retrieve(query, depth, filter)?;
        let dense: Vec<Arc<AdapterDoc>> = dense_hits.iter().map(|c| Arc::clone(&c.doc)).collect();
        let docs = self.lexical.docs();
        let lexical_hits = self.lexical.search(query.text, depth, filter)?;
        let lexical: Vec<Arc<AdapterDoc>> = lexical_hits
            .iter()
            .map(|h| Arc::clone(&docs[h.index]))
            .collect();
        let evidence = |scores: Vec<(&AdapterId, f32)>| -> HashMap<AdapterId, Evidence> {
            scores
                .into_iter()
                .enumerate()
                .map(|(i, (id, score))| (id.clone(), Evidence { rank: i + 1, score }))
                .collect()
        };
        let vector = evidence(dense_hits.iter().map(|c| (c.doc.id(), c.score)).collect());
        let bm25 = evidence(
            lexical
                .iter()
                .zip(&lexical_hits)
                .map(|(d, h)| (d.id(), h.score))
                .collect(),
        );
        // With no dense weight, dense-only documents still come after every lexical hit (their
        // fused score is 0 and ties keep first-appearance order, lexical first).
        let rankings: [(&[Arc<AdapterDoc>], f32); 2] = [
            (&lexical, self.fusion.lexical_weight),
            (&dense, self.fusion.dense_weight),
        ];
        Ok(reciprocal_rank_fusion(&rankings, self.fusion.rrf_k, k)
            .into_iter()
            .map(|candidate| ExplainedCandidate {
                vector: vector.get(candidate.doc.id()).copied(),
                bm25: bm25.get(candidate.doc.id()).copied(),
                candidate,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ExactRetriever;
    use crate::synthetic::{ClusteredVectors, docs};
    use stylus_core::AdapterId;

    /// 40 synthetic docs (tag `tag{i % 5}`) behind an exact dense retriever, fused with BM25.
    fn retrievers() -> (Arc<dyn SearchIndex>, LexicalIndex, Vec<f32>) {
        let d = docs(40);
        let vectors = ClusteredVectors::new(8, 4, 0.3, 1);
        let dense = ExactRetriever::new(d.clone(), vectors.matrix(40, 2)).unwrap();
        let query = vectors.queries(1, 3).remove(0);
        (
            Arc::new(dense),
            LexicalIndex::build(d, LexicalConfig::default()),
            query,
        )
    }

    fn ids(candidates: &[Candidate]) -> Vec<String> {
        candidates.iter().map(|c| c.doc.id().to_string()).collect()
    }

    #[test]
    fn bm25_mode_ranks_word_matches_first_and_fills_k_with_dense_results() {
        let (dense, lexical, query) = retrievers();
        let dense_ranking = dense
            .retrieve(Query::vector(&query), 30, &RetrievalFilter::default())
            .unwrap();
        let bm25 = HybridRetriever::bm25_only(dense, lexical);
        let filter = RetrievalFilter {
            blocked_ids: [AdapterId::Civitai(4)].into(),
            ..RetrievalFilter::default()
        };
        let got = bm25
            .retrieve(Query::new("tag3", &query), 30, &filter)
            .unwrap();
        assert_eq!(got.len(), 30);
        // Docs 4, 9, ..., 39 carry tag3 (index i % 5 == 3); 4 is blocked; 10 and 20 are nsfw.
        let tagged: Vec<String> = [9, 14, 19, 24, 29, 34, 39]
            .iter()
            .map(u64::to_string)
            .collect();
        let mut head = ids(&got[..7]);
        head.sort();
        let mut want = tagged.clone();
        want.sort();
        assert_eq!(head, want);
        // The rest follows the dense ranking, without repeats.
        let tail = ids(&got[7..]);
        let dense_order: Vec<String> = ids(&dense_ranking)
            .into_iter()
            .filter(|id| !tagged.contains(id) && id != "4")
            .collect();
        assert_eq!(tail, dense_order[..tail.len()]);
        assert!(got.iter().all(|c| !c.doc.card.nsfw));
    }

    #[test]
    fn hybrid_without_text_is_the_dense_ranking() {
        let (dense, lexical, query) = retrievers();
        let want = ids(&dense
            .retrieve(Query::vector(&query), 10, &RetrievalFilter::default())
            .unwrap());
        let hybrid = HybridRetriever::new(dense, lexical, FusionConfig::default());
        let got = hybrid
            .retrieve(Query::vector(&query), 10, &RetrievalFilter::default())
            .unwrap();
        assert_eq!(ids(&got), want);
        assert!(
            hybrid
                .retrieve(Query::vector(&query), 0, &RetrievalFilter::default())
                .is_err()
        );
    }

    #[test]
    fn rrf_rewards_agreement_between_rankings() {
        let d = docs(4);
        let a = vec![d[0].clone(), d[1].clone(), d[2].clone()];
        let b = vec![d[1].clone(), d[3].clone(), d[0].clone()];
        let fused = reciprocal_rank_fusion(&[(&a, 1.0), (&b, 1.0)], 60.0, 3);
        let ids: Vec<String> = fused.iter().map(|c| c.doc.id().to_string()).collect();
        // doc 2 (ranks 2 and 1) beats doc 1 (ranks 1 and 3); doc 4 appears once, at rank 2.
        assert_eq!(ids, ["2", "1", "4"]);
        let want = 1.0 / 62.0 + 1.0 / 61.0;
        assert!((fused[0].score - want).abs() < 1e-7);
        let lexical_only = reciprocal_rank_fusion(&[(&a, 0.0), (&b, 1.0)], 60.0, 1);
        assert_eq!(lexical_only[0].doc.id().to_string(), "2");
    }

    #[test]
    fn auto_mode_is_bm25_over_lexical_vectors_and_hybrid_over_semantic_ones() {
        let (dense, lexical, query) = retrievers();
        let all = RetrievalFilter::default();
        let ranked =
            |r: &dyn SearchIndex| ids(&r.retrieve(Query::new("tag3", &query), 20, &all).unwrap());
        let docs = lexical.docs().to_vec();
        let bm25 = HybridRetriever::bm25_only(dense.clone(), lexical);
        let fused = HybridRetriever::new(
            dense.clone(),
            LexicalIndex::build(docs.clone(), LexicalConfig::default()),
            FusionConfig::default(),
        );
        let auto_lexical = with_mode(RetrievalMode::Auto, dense.clone(), docs.clone(), true);
        let auto_semantic = with_mode(RetrievalMode::Auto, dense.clone(), docs.clone(), false);
        assert_eq!(ranked(auto_lexical.as_ref()), ranked(&bm25));
        assert_eq!(ranked(auto_semantic.as_ref()), ranked(&fused));
        assert_ne!(ranked(&bm25), ranked(&fused));
        let plain = with_mode(RetrievalMode::Dense, dense.clone(), docs, true);
        assert_eq!(ranked(plain.as_ref()), ranked(dense.as_ref()));
    }

    #[test]
    fn bm25_mode_reads_only_as_deep_as_needed_and_ranks_the_same() {
        let (dense, lexical, query) = retrievers();
        let bm25 = HybridRetriever::bm25_only(dense, lexical);
        let filter = RetrievalFilter::default();
        for text in ["tag3", "tag1 tag2", "nothing matches this"] {
            for k in [1, 5, 7, 12, 30, 40] {
                let fast = bm25.retrieve(Query::new(text, &query), k, &filter).unwrap();
                let full: Vec<Candidate> = bm25
                    .retrieve_explained(Query::new(text, &query), k, &filter)
                    .unwrap()
                    .into_iter()
                    .map(|e| e.candidate)
                    .collect();
                assert_eq!(ids(&fast), ids(&full), "{text:?} k={k}");
                let scores = |c: &[Candidate]| c.iter().map(|c| c.score).collect::<Vec<_>>();
                assert_eq!(scores(&fast), scores(&full), "{text:?} k={k}");
            }
        }
    }
}
