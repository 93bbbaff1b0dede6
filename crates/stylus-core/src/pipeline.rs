//! `Stylus`: the pipeline that wires the stages together.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::{
    AdapterDoc, AdapterId, AdapterLocator, Candidate, Composer, Embedder, Generation,
    GenerationRequest, LocatedFile, Masker, MissingAdapter, Query, ResolvedAdapter, Result,
    RetrievalFilter, Retriever, SampleJob, Sampler, SelectionPlan, StylusConfig, StylusError,
    Timings, WeightedAdapter, reciprocal_rank_fusion,
};

/// At most this many topics are searched on their own (a long prompt's later topics ride on the
/// whole prompt's ranking).
const MAX_TOPIC_QUERIES: usize = 8;
/// The RRF constant of the prompt/topic fusion (the usual 60).
const RRF_K: f32 = 60.0;

/// Options of one selection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SelectOptions {
    /// Sample this many masks (one per image); `None` lists every mask of the strategy.
    pub batch: Option<usize>,
    pub seed: u64,
}

/// The Stylus pipeline: embed -> retrieve -> compose -> mask, then render (merge + sample as
/// one job). Cheap to share (`Arc<Stylus>`): every method takes `&self`, and concurrent calls
/// share no mutable state.
pub struct Stylus {
    config: StylusConfig,
    filter: RetrievalFilter,
    embedder: Arc<dyn Embedder>,
    retriever: Arc<dyn Retriever>,
    composer: Arc<dyn Composer>,
    masker: Arc<dyn Masker>,
    locator: Option<Arc<dyn AdapterLocator>>,
    sampler: Option<Arc<dyn Sampler>>,
}

impl std::fmt::Debug for Stylus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stylus")
            .field("config", &self.config)
            .field("embedder", &self.embedder.id())
            .field("documents", &self.retriever.len())
            .field("generates", &self.sampler.is_some())
            .finish_non_exhaustive()
    }
}

impl Stylus {
    pub fn builder() -> StylusBuilder {
        StylusBuilder::default()
    }

    pub fn config(&self) -> &StylusConfig {
        &self.config
    }

    /// The top-K candidates for `prompt` (the configured K): the whole prompt's ranking fused
    /// with one ranking per composer topic (see [`RetrieverConfig::topic_k`]), then reranked by
    /// the composer ([`Composer::rerank`]).
    ///
    /// [`RetrieverConfig::topic_k`]: crate::RetrieverConfig::topic_k
    pub async fn retrieve(&self, prompt: &str) -> Result<Vec<Candidate>> {
        Ok(self.retrieve_timed(prompt).await?.0)
    }

    /// [`Stylus::retrieve`] and the milliseconds spent embedding.
    async fn retrieve_timed(&self, prompt: &str) -> Result<(Vec<Candidate>, f64)> {
        let config = &self.config.retriever;
        let mut topics: Vec<String> = Vec::new();
        if config.topic_k > 0 {
            let whole = prompt.trim().to_lowercase();
            for topic in self.composer.topic_queries(prompt) {
                let key = topic.trim().to_lowercase();
                if !key.is_empty()
                    && key != whole
                    && topics.len() < MAX_TOPIC_QUERIES
                    && !topics.iter().any(|t| t.to_lowercase() == key)
                {
                    topics.push(topic);
                }
            }
        }
        let mut texts = Vec::with_capacity(1 + topics.len());
        texts.push(prompt.to_string());
        texts.extend(topics.iter().cloned());
        let t0 = Instant::now();
        let vectors = self.embed_texts(&texts).await?;
        let embed_ms = t0.elapsed().as_secs_f64() * 1e3;
        let whole = self
            .retriever
            .retrieve(Query::new(prompt, &vectors[0]), config.top_k, &self.filter)
            .await?;
        if topics.is_empty() {
            return Ok((
                crate::blocking::run_cpu(|| self.composer.rerank(prompt, whole)),
                embed_ms,
            ));
        }
        let queries: Vec<Query<'_>> = topics
            .iter()
            .zip(&vectors[1..])
            .map(|(text, vector)| Query::new(text, vector))
            .collect();
        let per_topic = self
            .retriever
            .retrieve_batch(&queries, config.topic_k, &self.filter)
            .await?;
        let docs = |c: &[Candidate]| c.iter().map(|c| Arc::clone(&c.doc)).collect::<Vec<_>>();
        let whole_docs = docs(&whole);
        let topic_docs: Vec<Vec<Arc<AdapterDoc>>> = per_topic.iter().map(|c| docs(c)).collect();
        let mut rankings: Vec<(&[Arc<AdapterDoc>], f32)> = vec![(&whole_docs, 1.0)];
        rankings.extend(
            topic_docs
                .iter()
                .map(|d| (d.as_slice(), config.topic_weight / topic_docs.len() as f32)),
        );
        let mut fused = reciprocal_rank_fusion(&rankings, RRF_K, config.top_k);
        // The candidates keep the retriever's score of the whole prompt (what composers that
        // break ties by retrieval similarity expect); topic-only finds keep their topic score.
        let mut scores: HashMap<&AdapterId, f32> = HashMap::new();
        for c in per_topic.iter().flatten().chain(&whole) {
            scores.insert(c.doc.id(), c.score);
        }
        for c in &mut fused {
            c.score = scores.get(c.doc.id()).copied().unwrap_or(0.0);
        }
        Ok((
            crate::blocking::run_cpu(|| self.composer.rerank(prompt, fused)),
            embed_ms,
        ))
    }

    /// Selects adapters for `prompt` and lists every mask of the configured strategy.
    pub async fn select(&self, prompt: &str) -> Result<SelectionPlan> {
        self.select_with(prompt, SelectOptions::default()).await
    }

    /// Selects adapters for `prompt` with explicit mask sampling options.
    pub async fn select_with(&self, prompt: &str, options: SelectOptions) -> Result<SelectionPlan> {
        if prompt.trim().is_empty() {
            return Err(StylusError::InvalidArgument("the prompt is empty".into()));
        }
        let t1 = Instant::now();
        let (candidates, embed_ms) = self.retrieve_timed(prompt).await?;
        let t2 = Instant::now();
        let composition = self.composer.compose(prompt, &candidates).await?;
        let t3 = Instant::now();
        let masks = match options.batch {
            Some(n) => self.masker.sample(&composition, n, options.seed),
            None => self.masker.masks(&composition),
        };
        let (topics, masks, a1111_prompt) =
            self.config
                .prompt
                .plan(prompt, &composition, &masks, &self.config.weights);
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        Ok(SelectionPlan {
            prompt: prompt.to_string(),
            topics,
            masks,
            a1111_prompt,
            candidates: candidates.len(),
            timings_ms: Timings {
                embed: embed_ms,
                retrieve: ms(t1, t2) - embed_ms,
                compose: ms(t2, t3),
            },
        })
    }

    /// Selects once (unless `request.select` is off), then renders every image with its mask's
    /// adapter set (see [`Stylus::generate_with_plan`]). Returns the plan with the images.
    pub async fn generate(&self, request: &GenerationRequest) -> Result<Generation> {
        check_request(request)?;
        if self.sampler.is_none() {
            return Err(StylusError::MissingStage("sampler"));
        }
        let plan = if request.select {
            let options = SelectOptions {
                batch: Some(request.batch),
                seed: request.seed,
            };
            Some(self.select_with(&request.prompt, options).await?)
        } else {
            None
        };
        self.generate_with_plan(request, plan).await
    }

    /// Renders `request` from a plan made before (by [`Stylus::select_with`] with one mask per
    /// image, `batch: Some(request.batch)`): nothing is selected again. `None` renders the prompt
    /// without selected adapters. Every selected adapter must be found by the locator first: a
    /// missing file is one [`StylusError::MissingAdapters`] listing everything to download, before
    /// any compute starts. Each run of images with the same adapter set is one sampler job,
    /// rendered off the async workers with its adapter set (merge and sample in one step).
    pub async fn generate_with_plan(
        &self,
        request: &GenerationRequest,
        plan: Option<SelectionPlan>,
    ) -> Result<Generation> {
        check_request(request)?;
        let sampler = self
            .sampler
            .as_ref()
            .ok_or(StylusError::MissingStage("sampler"))?;

        let explicit: Vec<ResolvedAdapter> = request
            .explicit_loras
            .iter()
            .map(|lora| ResolvedAdapter::from_path(&lora.path, lora.weight))
            .collect();

        // (prompt text without <lora:> tags, selected adapters) per image.
        let per_image: Vec<(String, Vec<WeightedAdapter>)> = match &plan {
            Some(plan) => {
                if plan.masks.len() != request.batch {
                    return Err(StylusError::InvalidArgument(format!(
                        "the plan has {} mask(s) for {} image(s); select with one mask per image",
                        plan.masks.len(),
                        request.batch
                    )));
                }
                plan.masks
                    .iter()
                    .map(|m| (strip_lora_tags(&m.a1111_prompt), m.adapters.clone()))
                    .collect()
            }
            None => vec![(strip_lora_tags(&request.prompt), Vec::new()); request.batch],
        };

        let (resolved, mut used) = self.resolve_all(&per_image).await?;
        used.extend(explicit.iter().cloned());
        let mut images = Vec::with_capacity(request.batch);
        let mut start = 0;
        while start < per_image.len() {
            // Consecutive images with the same adapters and prompt share one job.
            let mut end = start + 1;
            while end < per_image.len() && per_image[end] == per_image[start] {
                end += 1;
            }
            let mut set = resolved[start].clone();
            set.extend(explicit.iter().cloned());
            let job = SampleJob {
                adapters: set,
                prompt: per_image[start].0.clone(),
                negative_prompt: request.negative_prompt.clone(),
                seed: request.seed,
                first_image: start,
                batch: end - start,
                sampling: request.sampling.clone(),
                init_latents: request.init_latents.clone(),
                keep_latents: request.keep_latents,
                init_image: request.init_image.clone(),
            };
            let sampler = Arc::clone(sampler);
            let (job, rendered) = crate::blocking::spawn_compute(move || {
                let rendered = sampler.sample(&job);
                (job, rendered)
            })
            .await;
            for mut image in rendered? {
                image.adapters = job.adapters.iter().map(|r| r.adapter.clone()).collect();
                images.push(image);
            }
            start = end;
        }
        Ok(Generation {
            plan,
            images,
            adapters: used,
        })
    }

    /// One query vector per text, checked against the index's dimension.
    async fn embed_texts(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let vectors = self.embedder.embed(texts).await?;
        if vectors.len() != texts.len() {
            return Err(StylusError::ModelReply {
                service: self.embedder.id(),
                attempts: 1,
                message: format!(
                    "{} vectors returned for {} texts",
                    vectors.len(),
                    texts.len()
                ),
            });
        }
        if let Some(query) = vectors.iter().find(|v| v.len() != self.retriever.dim()) {
            return Err(StylusError::Dimension {
                what: format!("the index (embedder {})", self.embedder.id()),
                expected: self.retriever.dim(),
                got: query.len(),
            });
        }
        Ok(vectors)
    }

    /// Each image's adapters with their files, and every distinct file once. Each adapter is
    /// located once, however many images use it.
    async fn resolve_all(
        &self,
        per_image: &[(String, Vec<WeightedAdapter>)],
    ) -> Result<(Vec<Vec<ResolvedAdapter>>, Vec<ResolvedAdapter>)> {
        let mut found: HashMap<AdapterId, Option<LocatedFile>> = HashMap::new();
        let mut used: Vec<ResolvedAdapter> = Vec::new();
        let mut missing: Vec<MissingAdapter> = Vec::new();
        for adapter in per_image.iter().flat_map(|(_, adapters)| adapters) {
            if found.contains_key(&adapter.id) {
                continue;
            }
            let located = match &self.locator {
                Some(locator) => locator.locate(adapter).await?,
                None => None,
            };
            match &located {
                Some(file) => used.push(ResolvedAdapter {
                    adapter: adapter.clone(),
                    path: file.path.clone(),
                    tensor_sha256: file.tensor_sha256.clone(),
                }),
                None => {
                    let file = adapter.file.as_ref();
                    missing.push(MissingAdapter {
                        id: adapter.id.clone(),
                        title: adapter.title.clone(),
                        file: file.map_or(adapter.alias.clone(), |f| f.name.clone()),
                        download_url: file.and_then(|f| f.download_url.clone()),
                    });
                }
            }
            found.insert(adapter.id.clone(), located);
        }
        if !missing.is_empty() {
            return Err(StylusError::MissingAdapters { adapters: missing });
        }
        let sets = per_image
            .iter()
            .map(|(_, adapters)| {
                adapters
                    .iter()
                    .filter_map(|adapter| {
                        let file = found.get(&adapter.id)?.as_ref()?;
                        Some(ResolvedAdapter {
                            adapter: adapter.clone(),
                            path: file.path.clone(),
                            tensor_sha256: file.tensor_sha256.clone(),
                        })
                    })
                    .collect()
            })
            .collect();
        Ok((sets, used))
    }
}

/// The checks of a request that need no stage.
fn check_request(request: &GenerationRequest) -> Result<()> {
    if request.batch == 0 {
        return Err(StylusError::InvalidArgument(
            "batch must be at least 1".into(),
        ));
    }
    request.sampling.validate()?;
    if let Some(init) = &request.init_image {
        init.validate()?;
        if request.init_latents.is_some() {
            return Err(StylusError::InvalidArgument(
                "--init-image and --latents both set the starting latents; give one".into(),
            ));
        }
    }
    Ok(())
}

/// Removes `<lora:...>` tags (the sampler gets adapters with the job, not through the prompt).
pub fn strip_lora_tags(prompt: &str) -> String {
    let mut out = String::with_capacity(prompt.len());
    let mut rest = prompt;
    while let Some(pos) = rest.find("<lora:") {
        out.push_str(&rest[..pos]);
        match rest[pos..].find('>') {
            Some(end) => rest = &rest[pos + end + 1..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Builds a [`Stylus`]. Embedder, retriever, composer and masker are required; locator and sampler
/// only for `generate`.
#[derive(Default)]
pub struct StylusBuilder {
    config: StylusConfig,
    filter: Option<RetrievalFilter>,
    embedder: Option<Arc<dyn Embedder>>,
    retriever: Option<Arc<dyn Retriever>>,
    composer: Option<Arc<dyn Composer>>,
    masker: Option<Arc<dyn Masker>>,
    locator: Option<Arc<dyn AdapterLocator>>,
    sampler: Option<Arc<dyn Sampler>>,
}

impl std::fmt::Debug for StylusBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StylusBuilder").finish_non_exhaustive()
    }
}

impl StylusBuilder {
    pub fn config(mut self, config: StylusConfig) -> Self {
        self.config = config;
        self
    }
    /// The retrieval filter; by default: no nsfw, SD 1.x (or unknown) base models only.
    pub fn filter(mut self, filter: RetrievalFilter) -> Self {
        self.filter = Some(filter);
        self
    }
    pub fn embedder(mut self, embedder: Arc<dyn Embedder>) -> Self {
        self.embedder = Some(embedder);
        self
    }
    pub fn retriever(mut self, retriever: Arc<dyn Retriever>) -> Self {
        self.retriever = Some(retriever);
        self
    }
    pub fn composer(mut self, composer: Arc<dyn Composer>) -> Self {
        self.composer = Some(composer);
        self
    }
    pub fn masker(mut self, masker: Arc<dyn Masker>) -> Self {
        self.masker = Some(masker);
        self
    }
    pub fn locator(mut self, locator: Arc<dyn AdapterLocator>) -> Self {
        self.locator = Some(locator);
        self
    }
    pub fn sampler(mut self, sampler: Arc<dyn Sampler>) -> Self {
        self.sampler = Some(sampler);
        self
    }

    pub fn build(self) -> Result<Stylus> {
        let embedder = self.embedder.ok_or(StylusError::MissingStage("embedder"))?;
        let retriever = self
            .retriever
            .ok_or(StylusError::MissingStage("retriever"))?;
        if embedder.dim() != retriever.dim() {
            return Err(StylusError::Dimension {
                what: format!("the index for embedder {}", embedder.id()),
                expected: retriever.dim(),
                got: embedder.dim(),
            });
        }
        Ok(Stylus {
            filter: self.filter.unwrap_or(RetrievalFilter {
                sd1_only: true,
                allow_nsfw: self.config.catalog.allow_nsfw,
                ..RetrievalFilter::default()
            }),
            config: self.config,
            embedder,
            retriever,
            composer: self.composer.ok_or(StylusError::MissingStage("composer"))?,
            masker: self.masker.ok_or(StylusError::MissingStage("masker"))?,
            locator: self.locator,
            sampler: self.sampler,
        })
    }
}
