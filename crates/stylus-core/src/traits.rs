//! The pipeline's pluggable stages. All are object-safe: an application holds `Arc<dyn Trait>` and
//! can plug in its own. Stages that do I/O (network refiners, embedders, composers) are async;
//! CPU-bound stages are sync. All are `Send + Sync`.

use std::path::PathBuf;

use async_trait::async_trait;

use crate::rng::SplitMix64;
use crate::{
    AdapterCard, AdapterDoc, Candidate, Composition, GeneratedImage, Mask, MergeReport, Query,
    ResolvedAdapter, Result, RetrievalFilter, SampleJob, WeightedAdapter,
};

/// Turns a raw card into a refined document (description, recommended weight, category).
#[async_trait]
pub trait Refiner: Send + Sync {
    /// A stable id (`card`, `vlm:<model>`): documents refined by another refiner are redone.
    fn id(&self) -> String;
    async fn refine(&self, card: &AdapterCard) -> Result<AdapterDoc>;
}

/// Maps texts to L2-normalized vectors of a fixed dimension.
#[async_trait]
pub trait Embedder: Send + Sync {
    /// A stable id (model name and version): stores and indexes remember it and refuse to mix.
    fn id(&self) -> String;
    fn dim(&self) -> usize;
    /// One vector per text, in order.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>>;
}

/// Top-K search over the adapter documents.
pub trait Retriever: Send + Sync {
    fn dim(&self) -> usize;
    /// Number of documents searched.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The `k` best candidates for `query` that pass `filter`, best first. Fewer than `k` only
    /// when fewer documents pass the filter.
    fn retrieve(
        &self,
        query: Query<'_>,
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<Candidate>>;
    /// [`Self::retrieve`] with the evidence behind each candidate. By default the candidate's
    /// own score is the vector search's; fusing retrievers report each ranking's.
    fn retrieve_explained(
        &self,
        query: Query<'_>,
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<crate::ExplainedCandidate>> {
        Ok(self
            .retrieve(query, k, filter)?
            .into_iter()
            .enumerate()
            .map(|(i, candidate)| crate::ExplainedCandidate {
                vector: Some(crate::Evidence {
                    rank: i + 1,
                    score: candidate.score,
                }),
                bm25: None,
                candidate,
            })
            .collect())
    }
    /// Many queries at once (implementations may parallelize).
    fn retrieve_batch(
        &self,
        queries: &[Query<'_>],
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<Vec<Candidate>>> {
        queries
            .iter()
            .map(|&q| self.retrieve(q, k, filter))
            .collect()
    }
}

/// Splits the prompt into topics and assigns candidates to them.
#[async_trait]
pub trait Composer: Send + Sync {
    async fn compose(&self, prompt: &str, candidates: &[Candidate]) -> Result<Composition>;

    /// The topics this composer expects to cut `prompt` into, known before retrieval. The
    /// pipeline searches each of them too (`retriever.topic_k`), so a keyword that the whole
    /// prompt drowns out ("dog" in "a man walking his dog in the park") still has candidates.
    /// The default, no topics, searches with the whole prompt only.
    fn topic_queries(&self, _prompt: &str) -> Vec<String> {
        Vec::new()
    }

    /// Reorders the retrieved candidates (best first) with what this composer knows that an
    /// embedding does not: which adapters a prompt names, and which ones its rules would never
    /// use. The pipeline calls it on every retrieval, so [`crate::Stylus::retrieve`] returns the
    /// reranked list. The default keeps the retriever's order.
    fn rerank(&self, _prompt: &str, candidates: Vec<Candidate>) -> Vec<Candidate> {
        candidates
    }
}

/// Builds the masks (adapter subsets) of a composition.
pub trait Masker: Send + Sync {
    /// Every mask of the strategy, in a stable order; never empty.
    fn masks(&self, composition: &Composition) -> Vec<Mask>;

    /// `n` masks for a batch of `n` images: a seeded shuffle of [`Masker::masks`], taken without
    /// repetition while it lasts and cycled after that.
    fn sample(&self, composition: &Composition, n: usize, seed: u64) -> Vec<Mask> {
        let mut all = self.masks(composition);
        let mut rng = SplitMix64::new(seed);
        for i in (1..all.len()).rev() {
            all.swap(i, rng.below(i + 1));
        }
        (0..n).map(|i| all[i % all.len()].clone()).collect()
    }
}

/// Finds the file of a selected adapter (by hash or alias) in local storage.
pub trait AdapterLocator: Send + Sync {
    /// `Ok(None)` when the file is not there (the pipeline then lists everything to download).
    fn locate(&self, adapter: &WeightedAdapter) -> Result<Option<PathBuf>>;
}

/// Makes a weighted adapter set active on the model, leaving the base weights untouched, so the
/// next set can replace it.
pub trait Merger: Send + Sync {
    fn set_adapters(&self, adapters: &[ResolvedAdapter]) -> Result<MergeReport>;
}

/// Renders images with the model as the merger left it.
pub trait Sampler: Send + Sync {
    fn sample(&self, job: &SampleJob) -> Result<Vec<GeneratedImage>>;
}
