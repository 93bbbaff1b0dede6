//! The pipeline's pluggable stages. All are object-safe: an application holds `Arc<dyn Trait>` and
//! can plug in its own. Every stage whose implementations may do I/O is async (`async-trait`):
//! refiners, embedders, composers, retrievers (a vector database is a retriever) and adapter
//! locators (a locator may download). CPU-bound stages (masker, merger, sampler) are sync; the
//! pipeline runs the sampler off the async workers. All are `Send + Sync`.
//!
//! In-process search indexes implement the sync [`SearchIndex`]; every `SearchIndex` is a
//! [`Retriever`] whose search runs through [`crate::blocking::run_cpu`], so it never stalls the
//! runtime's other tasks.

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

/// The inverted lists of sparse document vectors: for dimension `d`, `(document, value)` of every
/// document whose vector is non-zero there, documents in increasing order. Held in memory, or
/// read from a store file when a search first needs a dimension (a query touches a few dozen of
/// thousands), so a sparse index is ready without reading or transposing all its vectors.
pub trait PostingLists: Send + Sync + std::fmt::Debug {
    /// Number of dimensions.
    fn dim(&self) -> usize;
    /// Number of documents indexed (every list's documents are below it).
    fn docs(&self) -> usize;
    /// The list of dimension `d < dim()`; an error names the file a damaged list came from.
    fn list(&self, d: usize) -> Result<&[(u32, f32)]>;
}

/// Top-K search over the adapter documents held in this process (CPU work, no I/O): the sync
/// form of [`Retriever`]. Every `SearchIndex` is a `Retriever` (blanket implementation).
pub trait SearchIndex: Send + Sync {
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
        Ok(explain(self.retrieve(query, k, filter)?))
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

impl<T: SearchIndex + ?Sized> SearchIndex for std::sync::Arc<T> {
    fn dim(&self) -> usize {
        (**self).dim()
    }
    fn len(&self) -> usize {
        (**self).len()
    }
    fn retrieve(
        &self,
        query: Query<'_>,
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<Candidate>> {
        (**self).retrieve(query, k, filter)
    }
    fn retrieve_explained(
        &self,
        query: Query<'_>,
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<crate::ExplainedCandidate>> {
        (**self).retrieve_explained(query, k, filter)
    }
    fn retrieve_batch(
        &self,
        queries: &[Query<'_>],
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<Vec<Candidate>>> {
        (**self).retrieve_batch(queries, k, filter)
    }
}

/// An in-process index as a pipeline [`Retriever`].
pub fn retriever(index: std::sync::Arc<dyn SearchIndex>) -> std::sync::Arc<dyn Retriever> {
    std::sync::Arc::new(index)
}

/// Top-K search over the adapter documents, wherever they live: in this process (every
/// [`SearchIndex`] is a `Retriever`) or behind a service (Qdrant, pgvector, ...), which an
/// implementation awaits.
#[async_trait]
pub trait Retriever: Send + Sync {
    fn dim(&self) -> usize;
    /// Number of documents searched.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The `k` best candidates for `query` that pass `filter`, best first. Fewer than `k` only
    /// when fewer documents pass the filter.
    async fn retrieve(
        &self,
        query: Query<'_>,
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<Candidate>>;
    /// [`Self::retrieve`] with the evidence behind each candidate.
    async fn retrieve_explained(
        &self,
        query: Query<'_>,
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<crate::ExplainedCandidate>> {
        Ok(explain(self.retrieve(query, k, filter).await?))
    }
    /// Many queries at once (implementations may parallelize or send one request).
    async fn retrieve_batch(
        &self,
        queries: &[Query<'_>],
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<Vec<Candidate>>> {
        let mut out = Vec::with_capacity(queries.len());
        for &query in queries {
            out.push(self.retrieve(query, k, filter).await?);
        }
        Ok(out)
    }
}

/// Candidates with their own score as the vector search's evidence.
fn explain(candidates: Vec<Candidate>) -> Vec<crate::ExplainedCandidate> {
    candidates
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
        .collect()
}

#[async_trait]
impl<T: SearchIndex + ?Sized> Retriever for T {
    fn dim(&self) -> usize {
        SearchIndex::dim(self)
    }
    fn len(&self) -> usize {
        SearchIndex::len(self)
    }
    async fn retrieve(
        &self,
        query: Query<'_>,
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<Candidate>> {
        crate::blocking::run_cpu(|| SearchIndex::retrieve(self, query, k, filter))
    }
    async fn retrieve_explained(
        &self,
        query: Query<'_>,
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<crate::ExplainedCandidate>> {
        crate::blocking::run_cpu(|| SearchIndex::retrieve_explained(self, query, k, filter))
    }
    async fn retrieve_batch(
        &self,
        queries: &[Query<'_>],
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<Vec<Candidate>>> {
        crate::blocking::run_cpu(|| SearchIndex::retrieve_batch(self, queries, k, filter))
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

/// A found adapter file, with the hash the locator computed while finding it (so nobody reads
/// and hashes the file again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedFile {
    pub path: PathBuf,
    /// Hex SHA-256 of the bytes after the safetensors header (kohya's `sshs_model_hash`; its
    /// first 12 digits are A1111's / Civitai's AutoV3 "Lora hashes"), when the locator knows it.
    pub tensor_sha256: Option<String>,
}

impl LocatedFile {
    /// A path without a known hash.
    pub fn path(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            tensor_sha256: None,
        }
    }
}

/// Finds the file of a selected adapter (by hash or alias) in local storage, or fetches it.
#[async_trait]
pub trait AdapterLocator: Send + Sync {
    /// `Ok(None)` when the file is not there (the pipeline then lists everything to download).
    async fn locate(&self, adapter: &WeightedAdapter) -> Result<Option<LocatedFile>>;
}

/// Makes a weighted adapter set active on a model held by the implementation, leaving the base
/// weights untouched, so the next set can replace it. This is shared state: the pipeline does
/// not use it (its [`Sampler`] gets the adapter set with each job); it is for tools that bake
/// or inspect one set at a time.
pub trait Merger: Send + Sync {
    fn set_adapters(&self, adapters: &[ResolvedAdapter]) -> Result<MergeReport>;
}

/// Renders images: merge and sample as one atomic step. The adapter set travels with the job
/// ([`SampleJob::adapters`]), so concurrent calls never see each other's LoRAs. Long CPU/GPU work:
/// the pipeline calls it off the async runtime's workers.
pub trait Sampler: Send + Sync {
    fn sample(&self, job: &SampleJob) -> Result<Vec<GeneratedImage>>;
}
