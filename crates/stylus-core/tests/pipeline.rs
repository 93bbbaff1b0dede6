//! The pipeline wires trait objects: small in-test implementations of every stage run `select`
//! and `generate` end to end.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use stylus_core::*;

fn doc(id: u64, title: &str, category: Category, weight: f32) -> Arc<AdapterDoc> {
    let mut card = AdapterCard::new(AdapterId::Civitai(id), title, "LORA");
    card.file = Some(AdapterFile {
        name: format!("{}.safetensors", title.replace(' ', "_")),
        download_url: Some(format!("https://civitai.com/api/download/models/{id}")),
        ..AdapterFile::default()
    });
    Arc::new(AdapterDoc {
        description: title.to_string(),
        recommended_weight: weight,
        category,
        embedding_text: title.to_string(),
        refiner: "test".into(),
        card,
    })
}

/// Embeds a text as counts of three keywords.
struct KeywordEmbedder;

#[async_trait]
impl Embedder for KeywordEmbedder {
    fn id(&self) -> String {
        "keywords-v1".into()
    }
    fn dim(&self) -> usize {
        3
    }
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        Ok(texts
            .iter()
            .map(|t| {
                let t = t.to_lowercase();
                ["cat", "rain", "watercolor"]
                    .iter()
                    .map(|k| t.matches(k).count() as f32)
                    .collect()
            })
            .collect())
    }
}

/// Scores every document by dot product with its title's keyword vector.
struct ScanRetriever {
    docs: Vec<Arc<AdapterDoc>>,
}

impl SearchIndex for ScanRetriever {
    fn dim(&self) -> usize {
        3
    }
    fn len(&self) -> usize {
        self.docs.len()
    }
    fn retrieve(
        &self,
        query: Query<'_>,
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<Candidate>> {
        let mut out: Vec<Candidate> = self
            .docs
            .iter()
            .filter(|d| filter.accepts(d))
            .map(|d| {
                let t = d.card.title.to_lowercase();
                let v = ["cat", "rain", "watercolor"].map(|k| t.matches(k).count() as f32);
                Candidate {
                    doc: d.clone(),
                    score: v.iter().zip(query.vector).map(|(a, b)| a * b).sum(),
                }
            })
            .collect();
        out.sort_by(|a, b| b.score.total_cmp(&a.score));
        out.truncate(k);
        Ok(out)
    }
}

/// One topic per comma-separated part; a candidate goes to the first topic naming a word of it.
struct CommaComposer;

#[async_trait]
impl Composer for CommaComposer {
    async fn compose(&self, prompt: &str, candidates: &[Candidate]) -> Result<Composition> {
        let mut used = std::collections::HashSet::new();
        let topics = prompt
            .split(',')
            .map(|part| {
                let part = part.trim();
                let adapters = candidates
                    .iter()
                    .filter(|c| c.score > 0.0)
                    .filter(|c| {
                        c.doc
                            .card
                            .title
                            .to_lowercase()
                            .split(' ')
                            .any(|w| part.to_lowercase().contains(w))
                    })
                    .filter(|c| used.insert(c.doc.id().clone()))
                    .map(|c| c.doc.clone())
                    .collect();
                TopicAdapters {
                    topic: Topic {
                        text: part.to_string(),
                    },
                    adapters,
                }
            })
            .collect();
        Ok(Composition { topics })
    }
}

/// Each adapter alone, plus nothing.
struct OneAtATime;

impl Masker for OneAtATime {
    fn masks(&self, composition: &Composition) -> Vec<Mask> {
        let all = Mask::all(composition);
        let mut masks = vec![Mask {
            active: all.active.iter().map(|t| vec![false; t.len()]).collect(),
        }];
        for (t, topic) in all.active.iter().enumerate() {
            for a in 0..topic.len() {
                let mut m = masks[0].clone();
                m.active[t][a] = true;
                masks.push(m);
            }
        }
        masks
    }
}

#[derive(Default)]
struct FolderLocator {
    present: Vec<AdapterId>,
    calls: Mutex<Vec<AdapterId>>,
}

#[async_trait]
impl AdapterLocator for FolderLocator {
    async fn locate(&self, adapter: &WeightedAdapter) -> Result<Option<LocatedFile>> {
        self.calls.lock().unwrap().push(adapter.id.clone());
        Ok(self.present.contains(&adapter.id).then(|| LocatedFile {
            path: PathBuf::from(format!("/loras/{}.safetensors", adapter.alias)),
            tensor_sha256: Some(format!("{:0>64}", adapter.id.to_string())),
        }))
    }
}

/// Records each job's adapter set; renders a flat image whose colour encodes the number of
/// adapters in the job.
#[derive(Default)]
struct RecordingBackend {
    merges: Mutex<Vec<Vec<(String, f32)>>>,
    /// Each job's img2img settings.
    inits: Mutex<Vec<Option<InitImage>>>,
}

impl Sampler for RecordingBackend {
    fn sample(&self, job: &SampleJob) -> Result<Vec<GeneratedImage>> {
        self.inits.lock().unwrap().push(job.init_image.clone());
        self.merges.lock().unwrap().push(
            job.adapters
                .iter()
                .map(|a| (a.adapter.alias.clone(), a.adapter.weight))
                .collect(),
        );
        let active = job.adapters.len() as u8;
        Ok((0..job.batch)
            .map(|i| GeneratedImage {
                width: 8,
                height: 8,
                rgb: vec![active; 8 * 8 * 3],
                seed: job.seed + (job.first_image + i) as u64,
                prompt: job.prompt.clone(),
                negative_prompt: job.negative_prompt.clone(),
                adapters: Vec::new(),
                sampling: job.sampling.clone(),
                latents: None,
                init_image: None,
            })
            .collect())
    }
}

fn catalog() -> Vec<Arc<AdapterDoc>> {
    vec![
        doc(1, "cat ears", Category::Animal, 1.0),
        doc(2, "rain storm", Category::Background, 0.6),
        doc(3, "watercolor style", Category::Style, 0.8),
        doc(4, "rain puddles", Category::Background, 0.7),
        doc(5, "unrelated thing", Category::Object, 0.8),
    ]
}

fn pipeline(backend: Option<Arc<RecordingBackend>>, present: Vec<AdapterId>) -> Stylus {
    let mut builder = Stylus::builder()
        .embedder(Arc::new(KeywordEmbedder))
        .retriever(Arc::new(ScanRetriever { docs: catalog() }))
        .composer(Arc::new(CommaComposer))
        .masker(Arc::new(OneAtATime))
        .locator(Arc::new(FolderLocator {
            present,
            ..FolderLocator::default()
        }));
    if let Some(b) = backend {
        builder = builder.sampler(b);
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn select_runs_every_stage_and_weights_by_topic() {
    let stylus = pipeline(None, vec![]);
    let plan = stylus
        .select("A Cat, in the Rain, watercolor")
        .await
        .unwrap();

    let topics: Vec<&str> = plan.topics.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(topics, ["A Cat", "in the Rain", "watercolor"]);
    let ids: Vec<Vec<String>> = plan
        .topics
        .iter()
        .map(|t| t.adapters.iter().map(|a| a.id.to_string()).collect())
        .collect();
    assert_eq!(ids, [vec!["1"], vec!["2", "4"], vec!["3"]]);
    // recommended x 0.8 / active adapters in the topic
    let rain: Vec<f32> = plan.topics[1].adapters.iter().map(|a| a.weight).collect();
    assert!((rain[0] - 0.6 * 0.8 / 2.0).abs() < 1e-6);
    assert!((rain[1] - 0.7 * 0.8 / 2.0).abs() < 1e-6);
    assert_eq!(
        plan.a1111_prompt,
        "a cat, in the rain, watercolor, realistic, best quality \
         <lora:cat_ears:0.8> <lora:rain_storm:0.24> <lora:rain_puddles:0.28> \
         <lora:watercolor_style:0.64>"
    );
    // nothing + each of the 4 adapters alone; alone in its topic, an adapter gets the full share
    assert_eq!(plan.masks.len(), 5);
    assert!(plan.masks[0].adapters.is_empty());
    assert_eq!(plan.masks[2].adapters[0].alias, "rain_storm");
    assert!((plan.masks[2].adapters[0].weight - 0.48).abs() < 1e-6);
    assert_eq!(plan.candidates, 5);

    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(json["topics"][0]["adapters"][0]["id"], 1);
    assert!(json["timings_ms"]["compose"].is_number());
}

#[tokio::test]
async fn img2img_selects_as_txt2img_and_every_job_carries_the_image() {
    let backend = Arc::new(RecordingBackend::default());
    let present = (1..=5).map(AdapterId::Civitai).collect();
    let stylus = pipeline(Some(backend.clone()), present);
    let txt2img = GenerationRequest {
        prompt: "a cat, in the rain".into(),
        negative_prompt: String::new(),
        batch: 3,
        seed: 42,
        sampling: SamplingParams::default(),
        select: true,
        explicit_loras: Vec::new(),
        init_latents: None,
        keep_latents: false,
        init_image: None,
    };
    let mut init = InitImage::new("/photos/cat.png");
    init.strength = 0.6;
    let img2img = GenerationRequest {
        init_image: Some(init.clone()),
        ..txt2img.clone()
    };
    let plain = stylus.generate(&txt2img).await.unwrap();
    backend.inits.lock().unwrap().clear();
    let from_image = stylus.generate(&img2img).await.unwrap();
    let masks = |g: &Generation| serde_json::to_value(&g.plan.as_ref().unwrap().masks).unwrap();
    assert_eq!(masks(&plain), masks(&from_image), "selection is unchanged");
    let inits = backend.inits.lock().unwrap().clone();
    assert!(!inits.is_empty());
    assert!(inits.iter().all(|i| i.as_ref() == Some(&init)));

    // Checked before selection: strength outside [0, 1], an init image with init latents.
    let mut bad = img2img.clone();
    bad.init_image.as_mut().unwrap().strength = 1.5;
    let err = stylus.generate(&bad).await.unwrap_err().to_string();
    assert!(err.contains("--strength 1.5"), "{err}");
    let mut both = img2img;
    both.init_latents = Some("/latents.safetensors".into());
    let err = stylus.generate(&both).await.unwrap_err().to_string();
    assert!(err.contains("--latents"), "{err}");
}

#[tokio::test]
async fn generate_merges_each_mask_then_samples() {
    let backend = Arc::new(RecordingBackend::default());
    let present = (1..=5).map(AdapterId::Civitai).collect();
    let stylus = pipeline(Some(backend.clone()), present);
    let request = GenerationRequest {
        prompt: "a cat, in the rain".into(),
        negative_prompt: "blurry".into(),
        batch: 3,
        seed: 42,
        sampling: SamplingParams::default(),
        select: true,
        explicit_loras: vec![ExplicitLora {
            path: "/extra/detail.safetensors".into(),
            weight: 0.5,
        }],
        init_latents: None,
        keep_latents: false,
        init_image: None,
    };
    let generation = stylus.generate(&request).await.unwrap();
    let images = &generation.images;
    assert_eq!(images.len(), 3);
    // The plan the images came from comes back with them (selection ran once).
    let plan = generation.plan.as_ref().unwrap();
    assert_eq!(plan.masks.len(), 3);
    for (image, mask) in images.iter().zip(&plan.masks) {
        assert_eq!(image.adapters.len(), mask.adapters.len() + 1);
    }
    // Every file once, with the locator's hash; the explicit one last.
    let files: Vec<&str> = generation
        .adapters
        .iter()
        .map(|a| a.adapter.alias.as_str())
        .collect();
    assert_eq!(files.last(), Some(&"detail"));
    let distinct: std::collections::HashSet<_> = files.iter().collect();
    assert_eq!(distinct.len(), files.len());
    assert!(
        generation.adapters[..files.len() - 1]
            .iter()
            .all(|a| a.tensor_sha256.is_some())
    );
    assert_eq!(
        images.iter().map(|i| i.seed).collect::<Vec<_>>(),
        [42, 43, 44]
    );
    let merges = backend.merges.lock().unwrap();
    assert!(!merges.is_empty() && merges.len() <= 3);
    for (image, merged) in images.iter().zip(merges.iter()) {
        // the explicit LoRA comes last in every set, at its own weight
        assert_eq!(merged.last().unwrap(), &("detail".to_string(), 0.5));
        assert_eq!(image.adapters.len(), merged.len());
        assert!(!image.prompt.contains("<lora:"));
        assert!(image.prompt.ends_with("realistic, best quality"));
    }
}

#[tokio::test]
async fn generate_lists_every_missing_adapter_before_computing() {
    let backend = Arc::new(RecordingBackend::default());
    let stylus = pipeline(Some(backend.clone()), vec![AdapterId::Civitai(1)]);
    let request = GenerationRequest {
        prompt: "a cat, in the rain".into(),
        negative_prompt: String::new(),
        batch: 5,
        seed: 0,
        sampling: SamplingParams::default(),
        select: true,
        explicit_loras: vec![],
        init_latents: None,
        keep_latents: false,
        init_image: None,
    };
    let err = stylus.generate(&request).await.unwrap_err();
    let StylusError::MissingAdapters { adapters } = &err else {
        panic!("{err}");
    };
    assert!(adapters.iter().all(|a| a.id != AdapterId::Civitai(1)));
    assert_eq!(err.exit_code(), 3);
    let err = err.to_string();
    assert!(err.contains("rain_storm.safetensors"), "{err}");
    assert!(
        err.contains("https://civitai.com/api/download/models/4"),
        "{err}"
    );
    assert!(
        !err.contains("cat_ears"),
        "present adapters are not listed: {err}"
    );
    assert!(backend.merges.lock().unwrap().is_empty());
}

#[tokio::test]
async fn missing_stages_and_mismatched_dimensions_are_errors() {
    let stylus = pipeline(None, vec![]);
    let request = GenerationRequest {
        prompt: "a cat".into(),
        negative_prompt: String::new(),
        batch: 1,
        seed: 0,
        sampling: SamplingParams::default(),
        select: false,
        explicit_loras: vec![],
        init_latents: None,
        keep_latents: false,
        init_image: None,
    };
    let err = stylus.generate(&request).await.unwrap_err();
    assert!(matches!(err, StylusError::MissingStage("sampler")), "{err}");
    assert!(matches!(
        stylus.select("  ").await.unwrap_err(),
        StylusError::InvalidArgument(_)
    ));

    struct WideEmbedder;
    #[async_trait]
    impl Embedder for WideEmbedder {
        fn id(&self) -> String {
            "wide".into()
        }
        fn dim(&self) -> usize {
            4
        }
        async fn embed(&self, t: &[String]) -> Result<Vec<Vec<f32>>> {
            Ok(vec![vec![0.0; 4]; t.len()])
        }
    }
    let err = Stylus::builder()
        .embedder(Arc::new(WideEmbedder))
        .retriever(Arc::new(ScanRetriever { docs: catalog() }))
        .composer(Arc::new(CommaComposer))
        .masker(Arc::new(OneAtATime))
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("expects 3, got 4"), "{err}");
}

#[test]
fn masker_sampling_is_seeded_and_covers_masks_before_repeating() {
    let composition = Composition {
        topics: vec![TopicAdapters {
            topic: Topic { text: "x".into() },
            adapters: catalog()[..3].to_vec(),
        }],
    };
    let a = OneAtATime.sample(&composition, 4, 9);
    assert_eq!(a, OneAtATime.sample(&composition, 4, 9));
    let distinct: std::collections::HashSet<_> = a.iter().collect();
    assert_eq!(distinct.len(), 4, "4 masks exist, 4 sampled: no repeats");
    assert_eq!(OneAtATime.sample(&composition, 9, 9).len(), 9);
}

#[test]
fn errors_carry_their_context() {
    let e = StylusError::Json {
        path: "cards.jsonl".into(),
        line: Some(17),
        message: "expected value".into(),
        source: None,
    };
    assert_eq!(
        e.to_string(),
        "cards.jsonl:17: malformed JSON: expected value"
    );
    let e = StylusError::tensor(
        "lora.safetensors",
        "lora_unet_x.lora_up.weight",
        "contains NaN",
    );
    assert_eq!(
        e.to_string(),
        "lora.safetensors: tensor `lora_unet_x.lora_up.weight`: contains NaN"
    );
    let e = StylusError::adapter(&AdapterId::Civitai(58390), "no SD 1.5 version");
    assert_eq!(e.to_string(), "adapter 58390: no SD 1.5 version");
    let e = StylusError::Http {
        url: "http://127.0.0.1:1/v1/chat/completions".into(),
        status: Some(429),
        message: "rate limited after 3 retries".into(),
        source: None,
    };
    assert!(e.to_string().ends_with("(status 429)"));
    assert_eq!(StylusError::InvalidArgument("K = 0".into()).exit_code(), 2);
    assert_eq!(e.exit_code(), 1);
}

#[test]
fn base_models_and_ids_parse() {
    assert_eq!(BaseModel::parse("SD 1.5"), BaseModel::Sd1);
    assert_eq!(BaseModel::parse("SD 1.4"), BaseModel::Sd1);
    assert_eq!(BaseModel::parse("SDXL 1.0"), BaseModel::Sdxl);
    assert_eq!(BaseModel::parse("SD 2.1 768"), BaseModel::Sd2);
    assert_eq!(BaseModel::parse("Other"), BaseModel::Other("Other".into()));
    assert_eq!(
        "58390".parse::<AdapterId>().unwrap(),
        AdapterId::Civitai(58390)
    );
    assert_eq!(
        serde_json::to_string(&AdapterId::local_from_sha256("ABC")).unwrap(),
        "\"sha256:abc\""
    );
    assert_eq!(
        strip_lora_tags("a cat <lora:x:0.5>, rain <lora:y:1>"),
        "a cat , rain"
    );
}

/// A retriever behind a service: it sends the query vector to a search server on 127.0.0.1 and
/// awaits the ranked document indexes (one line of text each way), as a vector-database client
/// would. The pipeline awaits it like any stage.
struct RemoteRetriever {
    addr: std::net::SocketAddr,
    docs: Vec<Arc<AdapterDoc>>,
    requests: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl Retriever for RemoteRetriever {
    fn dim(&self) -> usize {
        3
    }
    fn len(&self) -> usize {
        self.docs.len()
    }
    async fn retrieve(
        &self,
        query: Query<'_>,
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<Candidate>> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let io = |e: std::io::Error| StylusError::io("<search service>", e);
        let mut stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(io)?;
        let line: Vec<String> = query.vector.iter().map(f32::to_string).collect();
        stream
            .write_all(format!("{} {k}\n", line.join(",")).as_bytes())
            .await
            .map_err(io)?;
        let mut reply = String::new();
        BufReader::new(stream)
            .read_line(&mut reply)
            .await
            .map_err(io)?;
        Ok(reply
            .split_whitespace()
            .filter_map(|part| {
                let (row, score) = part.split_once(':')?;
                let doc = self.docs.get(row.parse::<usize>().ok()?)?;
                Some(Candidate {
                    doc: doc.clone(),
                    score: score.parse().ok()?,
                })
            })
            .filter(|c| filter.accepts(&c.doc))
            .collect())
    }
}

/// The search service: scores the catalog's keyword vectors against the query.
async fn search_service() -> std::net::SocketAddr {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let docs = catalog();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let docs = docs.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                BufReader::new(read).read_line(&mut line).await.unwrap();
                let (vector, k) = line.trim().rsplit_once(' ').unwrap();
                let query: Vec<f32> = vector.split(',').map(|v| v.parse().unwrap()).collect();
                let mut scored: Vec<(usize, f32)> = docs
                    .iter()
                    .enumerate()
                    .map(|(row, d)| {
                        let t = d.card.title.to_lowercase();
                        let v = ["cat", "rain", "watercolor"].map(|w| t.matches(w).count() as f32);
                        (row, v.iter().zip(&query).map(|(a, b)| a * b).sum())
                    })
                    .collect();
                scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                scored.truncate(k.parse().unwrap());
                let reply: Vec<String> = scored.iter().map(|(r, s)| format!("{r}:{s}")).collect();
                write
                    .write_all(format!("{}\n", reply.join(" ")).as_bytes())
                    .await
                    .unwrap();
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retriever_that_awaits_a_service_plugs_in() {
    let addr = search_service().await;
    let remote = Arc::new(RemoteRetriever {
        addr,
        docs: catalog(),
        requests: 0.into(),
    });
    let build = |retriever: Arc<dyn Retriever>| {
        Stylus::builder()
            .embedder(Arc::new(KeywordEmbedder))
            .retriever(retriever)
            .composer(Arc::new(CommaComposer))
            .masker(Arc::new(OneAtATime))
            .build()
            .unwrap()
    };
    let prompt = "A Cat, in the Rain, watercolor";
    let over_the_wire = build(remote.clone()).select(prompt).await.unwrap();
    let in_process = build(Arc::new(ScanRetriever { docs: catalog() }))
        .select(prompt)
        .await
        .unwrap();
    assert!(remote.requests.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert_eq!(over_the_wire.topics, in_process.topics);
    assert_eq!(over_the_wire.a1111_prompt, in_process.a1111_prompt);
}

#[tokio::test]
async fn generate_with_a_plan_selects_nothing_and_locates_each_adapter_once() {
    let backend = Arc::new(RecordingBackend::default());
    let present: Vec<AdapterId> = (1..=5).map(AdapterId::Civitai).collect();
    let locator = Arc::new(FolderLocator {
        present,
        ..FolderLocator::default()
    });
    let stylus = Stylus::builder()
        .embedder(Arc::new(KeywordEmbedder))
        .retriever(Arc::new(ScanRetriever { docs: catalog() }))
        .composer(Arc::new(CommaComposer))
        .masker(Arc::new(OneAtATime))
        .locator(locator.clone())
        .sampler(backend.clone())
        .build()
        .unwrap();
    let request = GenerationRequest {
        prompt: "a cat, in the rain".into(),
        negative_prompt: String::new(),
        batch: 6,
        seed: 3,
        sampling: SamplingParams::default(),
        select: true,
        explicit_loras: vec![],
        init_latents: None,
        keep_latents: false,
        init_image: None,
    };
    let plan = stylus
        .select_with(
            &request.prompt,
            SelectOptions {
                batch: Some(6),
                seed: 3,
            },
        )
        .await
        .unwrap();
    let generation = stylus
        .generate_with_plan(&request, Some(plan.clone()))
        .await
        .unwrap();
    assert_eq!(generation.plan.as_ref(), Some(&plan));
    let calls = locator.calls.lock().unwrap().clone();
    let distinct: std::collections::HashSet<_> = calls.iter().collect();
    assert_eq!(calls.len(), distinct.len(), "located once each: {calls:?}");
    for (image, mask) in generation.images.iter().zip(&plan.masks) {
        assert_eq!(image.adapters, mask.adapters);
    }
    // A plan with another number of masks than images is refused.
    let mut short = plan;
    short.masks.pop();
    assert!(matches!(
        stylus.generate_with_plan(&request, Some(short)).await,
        Err(StylusError::InvalidArgument(_))
    ));
}
