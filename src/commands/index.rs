//! `stylus index`: catalog -> refined, embedded StylusDocs store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use stylus_core::openai::{OpenAiClient, OpenAiConfig};
use stylus_core::{AdapterCard, AdapterDoc, Embedder, Refiner, StylusConfig, StylusError};
use stylus_refiner::bert::{BertEmbedder, CpuBackend, default_minilm_dir};
use stylus_refiner::card_refiner::CardRefiner;
use stylus_refiner::civitai::{CatalogRead, read_civitai_paths};
use stylus_refiner::civitai_api::{CivitaiClient, ModelsQuery, RetryPolicy};
use stylus_refiner::filters::CardFilter;
use stylus_refiner::indexer::{RefreshCounts, embed_docs, refine_cards};
use stylus_refiner::lexical::{DEFAULT_DIM, LexicalEmbedder};
use stylus_refiner::lora_folder::read_lora_folder;
use stylus_refiner::openai_embedder::OpenAiEmbedder;
use stylus_refiner::postings_file::POSTINGS_FILE;
use stylus_refiner::store::{
    ExtraFile, LIGHT_DOCS_FILE, MANIFEST_FILE, NewStore, SPARSE_VECTORS_FILE, StoreLock, StylusDocs,
};
use stylus_refiner::vlm_refiner::{VlmRefiner, VlmRefinerConfig};
use stylus_retriever::LexicalConfig;
use stylus_retriever::lexical::{BM25_FILE, Bm25Postings};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Civitai model JSON: a JSON array, a paged `{items, metadata}` response or JSONL; files or
    /// directories. An `https://` origin (e.g. `https://civitai.com`) fetches SD 1.5 LoRAs live
    /// from its `/api/v1/models` (key from CIVITAI_API_KEY), with a resumable page cache in
    /// `~/.cache/stylus/civitai`.
    #[arg(long, value_name = "FILE|DIR|URL")]
    pub civitai: Vec<PathBuf>,
    /// With a live fetch: stop after this many pages (100 models each).
    #[arg(long, value_name = "N")]
    pub max_pages: Option<usize>,
    /// A folder of LoRA files (safetensors metadata and sidecar files are read).
    #[arg(long, value_name = "DIR")]
    pub lora_dir: Option<PathBuf>,
    /// Output directory of the StylusDocs store.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Embedder: `lexical` (no weights), `bert[:DIR]` (MiniLM-class model) or `openai[:MODEL]`
    /// (an OpenAI-compatible `/v1/embeddings`: STYLUS_EMBED_BASE_URL, STYLUS_EMBED_API_KEY, else
    /// OPENAI_BASE_URL, OPENAI_API_KEY).
    #[arg(long, default_value = "lexical")]
    pub embedder: String,
    /// Refiner: `card` (offline rules over the card's text) or `vlm[:MODEL]` (a vision-language
    /// model reads the card and its sample images: STYLUS_VLM_BASE_URL, STYLUS_VLM_MODEL,
    /// STYLUS_VLM_API_KEY, else OPENAI_BASE_URL, OPENAI_API_KEY). VLM answers are cached per
    /// adapter version in `~/.cache/stylus/vlm`, so an interrupted run resumes.
    #[arg(long, default_value = "card")]
    pub refiner: String,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The run's summary (`--json` prints the fields not skipped).
#[derive(Debug, Serialize)]
struct Summary {
    cards_read: usize,
    kept: usize,
    skipped: BTreeMap<String, usize>,
    malformed: usize,
    seconds: f64,
    #[serde(skip)]
    malformed_messages: Vec<String>,
    #[serde(skip)]
    counts: RefreshCounts,
    #[serde(skip)]
    embedder_id: String,
    /// Seconds per phase, in order.
    phases_s: Vec<(&'static str, f64)>,
    /// The store already held exactly this: it was left as it was.
    unchanged: bool,
}

/// Wall-clock time of each phase of the run.
#[derive(Debug)]
struct Phases {
    since: Instant,
    done: Vec<(&'static str, f64)>,
}

impl Default for Phases {
    fn default() -> Self {
        Self {
            since: Instant::now(),
            done: Vec::new(),
        }
    }
}

impl Phases {
    /// Ends the phase `name` now.
    fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.done.push((name, (now - self.since).as_secs_f64()));
        self.since = now;
    }
}

pub fn run(args: Args, config: &StylusConfig) -> Result<(), StylusError> {
    if args.civitai.is_empty() && args.lora_dir.is_none() {
        return Err(StylusError::InvalidArgument(
            "nothing to index: give --civitai <file|dir> and/or --lora-dir <dir>".into(),
        ));
    }
    check_embedder_spec(&args.embedder)?;
    // Named refiners are checked before anything is read.
    let (refiner, concurrency) = make_refiner(&args.refiner, config)?;
    // Every local source must exist: a typo must not turn into an empty store.
    for source in &args.civitai {
        let text = source.to_string_lossy();
        let remote = text.starts_with("http://") || text.starts_with("https://");
        if !remote && !source.exists() {
            return Err(StylusError::InvalidArgument(format!(
                "--civitai {}: no such file or directory (nothing was written)",
                source.display()
            )));
        }
    }
    if let Some(dir) = &args.lora_dir
        && !dir.is_dir()
    {
        return Err(StylusError::InvalidArgument(format!(
            "--lora-dir {}: not a directory (nothing was written)",
            dir.display()
        )));
    }
    let start = Instant::now();
    let mut phases = Phases::default();
    // One writer per store: a second `stylus index` into the same --out fails here, clearly.
    let lock = StoreLock::acquire(&args.out)?;
    let runtime = super::runtime()?;
    let mut sources = Vec::new();
    for source in &args.civitai {
        let text = source.to_string_lossy();
        if text.starts_with("http://") || text.starts_with("https://") {
            sources.push(runtime.block_on(fetch_live(&text, args.max_pages, config))?);
        } else {
            sources.push(source.clone());
        }
    }
    let mut read = read_civitai_paths(&sources);
    if let Some(dir) = &args.lora_dir {
        read.extend(read_lora_folder(dir));
    }
    let CatalogRead {
        entries,
        malformed,
        items_read,
    } = read;
    // Each problem is reported once: in the summary on stdout, or (with --json, whose summary
    // only counts them) as a warning on stderr.
    if args.json {
        for err in &malformed {
            tracing::warn!("{err}");
        }
    }
    let filtered = CardFilter::new(&config.catalog).apply(entries);
    let cards: Vec<AdapterCard> = filtered.kept.into_iter().map(|e| e.card).collect();
    if cards.is_empty() {
        let skipped: usize = filtered.skipped.values().sum();
        return Err(StylusError::store(
            &args.out,
            format!(
                "nothing to index: {items_read} item(s) read, {} malformed, {skipped} filtered \
                 out, 0 adapters kept; {} (check the --civitai / --lora-dir paths)",
                malformed.len(),
                if args.out.exists() {
                    "the existing store was left untouched"
                } else {
                    "no store was written"
                }
            ),
        ));
    }

    phases.mark("read");
    let previous = open_previous(&args.out);
    phases.mark("open previous");
    let mut counts = RefreshCounts::default();
    let (docs, vectors, embedder_id, dim, mut extra_files) = runtime.block_on(async {
        let bar = progress_bar(cards.len(), "refining");
        let docs = refine_cards(
            &cards,
            refiner.as_ref(),
            previous.as_ref(),
            &mut counts,
            concurrency,
            &|n| bar.set_position(n as u64),
        )
        .await?;
        bar.finish_and_clear();
        phases.mark("refine");

        let texts: Vec<&str> = docs.iter().map(|d| d.embedding_text.as_str()).collect();
        // Every document reused, none added or dropped: the corpus is the previous store's, so
        // is its lexical IDF table (no refit).
        let same_corpus = previous
            .as_ref()
            .filter(|p| counts.docs_refined == 0 && p.len() == docs.len());
        let (embedder, extra_files) =
            make_embedder(&args.embedder, &texts, config, same_corpus).await?;
        phases.mark("load embedder");
        let bar = progress_bar(docs.len(), "embedding");
        let vectors = embed_docs(
            &docs,
            embedder.as_ref(),
            previous.as_ref(),
            &mut counts,
            &|n| bar.set_position(n as u64),
        )
        .await?;
        bar.finish_and_clear();
        phases.mark("embed");
        Ok::<_, StylusError>((docs, vectors, embedder.id(), embedder.dim(), extra_files))
    })?;
    extra_files.push(bm25_file(&docs, previous.as_ref(), &args.out));
    phases.mark("bm25 index");
    let kept = docs.len();
    let unchanged = previous.as_ref().is_some_and(|p| {
        counts.docs_refined == 0
            && counts.vectors_embedded == 0
            && p.embedder_id() == embedder_id
            && p.dim() == dim
            && p.docs() == docs.as_slice()
            && same_extra_files(p, &extra_files)
            // Stores written before the light documents or the sparse postings existed are
            // written once more.
            && p.manifest().files.contains_key(LIGHT_DOCS_FILE)
            && (!p.manifest().files.contains_key(SPARSE_VECTORS_FILE)
                || p.manifest().files.contains_key(POSTINGS_FILE))
    });
    drop(previous);
    if unchanged {
        // Same documents in the same order, same vectors and files: nothing to write.
        tracing::debug!(store = %args.out.display(), "store unchanged, not rewritten");
    } else {
        StylusDocs::write(
            &args.out,
            NewStore {
                embedder_id: embedder_id.clone(),
                dim,
                docs,
                vectors,
                extra_files,
            },
        )?;
    }
    drop(lock);
    phases.mark("write");

    let summary = Summary {
        cards_read: items_read,
        kept,
        skipped: filtered
            .skipped
            .iter()
            .map(|(reason, n)| (reason.as_str().to_string(), *n))
            .collect(),
        malformed: malformed.len(),
        seconds: start.elapsed().as_secs_f64(),
        malformed_messages: malformed.iter().map(ToString::to_string).collect(),
        counts,
        embedder_id,
        phases_s: phases.done,
        unchanged,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&summary).expect("the summary always serializes")
        );
    } else {
        print_summary(&summary, &args.out);
    }
    Ok(())
}

/// Fetches `GET {origin}/api/v1/models` (LoRA, SD 1.5) into the page cache; returns its folder.
async fn fetch_live(
    origin: &str,
    max_pages: Option<usize>,
    config: &StylusConfig,
) -> Result<PathBuf, StylusError> {
    let home = std::env::var_os("HOME").ok_or_else(|| {
        StylusError::InvalidArgument("HOME is not set: no place for the Civitai page cache".into())
    })?;
    let cache = PathBuf::from(home).join(".cache/stylus/civitai");
    let network = super::network("CIVITAI", config)?;
    let mut policy = RetryPolicy::default();
    if let Some(t) = network.timeout_secs {
        policy.timeout = std::time::Duration::from_secs_f64(t);
    }
    if let Some(r) = network.retries {
        policy.max_retries = r;
    }
    let client = CivitaiClient::new(origin, policy)?;
    let query = ModelsQuery {
        max_pages,
        ..ModelsQuery::default()
    };
    let report = client.fetch_models(&query, &cache).await?;
    tracing::info!(
        pages_cached = report.pages_cached,
        pages_fetched = report.pages_fetched,
        complete = report.complete,
        dir = %report.dir.display(),
        "Civitai fetch done"
    );
    Ok(report.dir)
}

/// The store already at `out`, for an incremental refresh; a broken one is rebuilt from scratch.
fn open_previous(out: &Path) -> Option<StylusDocs> {
    if !out.join(MANIFEST_FILE).is_file() {
        return None;
    }
    match StylusDocs::open_unlocked_keeping(out, &[BM25_FILE]) {
        Ok(store) => Some(store),
        Err(err) => {
            tracing::warn!("ignoring the existing store, rebuilding it: {err}");
            None
        }
    }
}

/// The refiner named by `--refiner`, with the number of cards to refine at once.
fn make_refiner(
    spec: &str,
    stylus_config: &StylusConfig,
) -> Result<(Box<dyn Refiner>, usize), StylusError> {
    match spec.split_once(':').unwrap_or((spec, "")) {
        ("card", "") => Ok((Box::new(CardRefiner::default()), 1)),
        ("vlm", model) => {
            let network = super::network("VLM", stylus_config)?;
            let mut config = OpenAiConfig::from_env("VLM", "gpt-4o-mini").with_network(&network);
            if !model.is_empty() {
                config.model = model.to_string();
            }
            let concurrency = config.max_concurrency;
            let cache_dir =
                std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/stylus/vlm"));
            let refiner = VlmRefiner::new(
                OpenAiClient::new(config)?,
                VlmRefinerConfig {
                    cache_dir,
                    reply_attempts: network
                        .reply_attempts
                        .unwrap_or(VlmRefinerConfig::default().reply_attempts),
                    ..VlmRefinerConfig::default()
                },
            );
            Ok((Box::new(refiner), concurrency))
        }
        _ => Err(StylusError::InvalidArgument(format!(
            "--refiner {spec}: expected card or vlm[:MODEL]"
        ))),
    }
}

/// The BM25 postings of `docs` as a store file (read back when the store is opened, instead of
/// tokenizing every card again): the previous store's file when it indexes the same documents in
/// the current format, else built.
fn bm25_file(docs: &[AdapterDoc], previous: Option<&StylusDocs>, out: &Path) -> ExtraFile {
    let path = out.join(BM25_FILE);
    let reusable = previous
        .filter(|p| p.docs() == docs)
        .and_then(|p| p.kept_file(BM25_FILE))
        .filter(|bytes| {
            Bm25Postings::from_bytes(bytes, &path)
                .is_ok_and(|p| p.config() == LexicalConfig::default())
        });
    let bytes = match reusable {
        Some(bytes) => bytes.to_vec(),
        None => Bm25Postings::build(docs, LexicalConfig::default()).to_bytes(),
    };
    ExtraFile {
        name: BM25_FILE.to_string(),
        bytes,
    }
}

/// Whether the store already holds exactly these extra files (by size and sha256).
fn same_extra_files(store: &StylusDocs, files: &[ExtraFile]) -> bool {
    files.iter().all(|f| store.holds_file(&f.name, &f.bytes))
}

/// The embedder named by `--embedder`, with the files it stores next to the vectors. With
/// `same_corpus` (a store built from the same embedding texts), a lexical embedder is loaded
/// from that store instead of refitted.
async fn make_embedder(
    spec: &str,
    texts: &[&str],
    stylus_config: &StylusConfig,
    same_corpus: Option<&StylusDocs>,
) -> Result<(Box<dyn Embedder>, Vec<ExtraFile>), StylusError> {
    let (kind, arg) = match spec.split_once(':') {
        Some((kind, arg)) => (kind, Some(arg)),
        None => (spec, None),
    };
    match kind {
        "lexical" => {
            let dim = match arg {
                Some(dim) => dim.parse().map_err(|_| {
                    StylusError::InvalidArgument(format!("--embedder lexical:{dim}: not a number"))
                })?,
                None => DEFAULT_DIM,
            };
            // The IDF table is fitted on this corpus and stored with it.
            let reused = same_corpus
                .filter(|p| p.dim() == dim)
                .and_then(|p| LexicalEmbedder::from_store(p).ok());
            let embedder = match reused {
                Some(embedder) => embedder,
                None => LexicalEmbedder::fit(texts, dim)?,
            };
            let files = vec![embedder.store_file()];
            Ok((Box::new(embedder), files))
        }
        "bert" => {
            let embedder = match arg {
                Some(location) => BertEmbedder::<CpuBackend>::open(&expand_tilde(location))?,
                None => {
                    let dir = default_minilm_dir().ok_or_else(|| {
                        StylusError::InvalidArgument(
                            "--embedder bert: no model directory; give bert:DIR or set \
                             STYLUS_MINILM_DIR"
                                .into(),
                        )
                    })?;
                    BertEmbedder::<CpuBackend>::from_dir(dir)?
                }
            };
            Ok((Box::new(embedder), Vec::new()))
        }
        "openai" => {
            let network = super::network("EMBED", stylus_config)?;
            let mut config =
                OpenAiConfig::from_env("EMBED", "text-embedding-3-small").with_network(&network);
            if let Some(model) = arg {
                config.model = model.to_string();
            }
            let client = OpenAiClient::new(config)?;
            let embedder =
                OpenAiEmbedder::probe(client, OpenAiEmbedder::DEFAULT_BATCH_SIZE).await?;
            Ok((Box::new(embedder), Vec::new()))
        }
        other => Err(StylusError::InvalidArgument(format!(
            "--embedder {other}: expected lexical[:DIM], bert[:DIR] or openai[:MODEL]"
        ))),
    }
}

/// `~/x` as `$HOME/x` (a shell leaves `bert:~/x` alone: the `~` is not at a word's start).
fn expand_tilde(path: &str) -> String {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest).display().to_string(),
        _ if path == "~" => std::env::var("HOME").unwrap_or_else(|_| path.to_string()),
        _ => path.to_string(),
    }
}

/// Checks `--embedder` before any work: the kind is known, a lexical dimension is a number, a
/// BERT model folder holds a model (the error says how to get one).
fn check_embedder_spec(spec: &str) -> Result<(), StylusError> {
    let (kind, arg) = match spec.split_once(':') {
        Some((kind, arg)) => (kind, Some(arg)),
        None => (spec, None),
    };
    match (kind, arg) {
        ("lexical", None) | ("openai", _) => Ok(()),
        ("lexical", Some(dim)) => match dim.parse::<usize>() {
            Ok(d) if (16..=1 << 20).contains(&d) => Ok(()),
            _ => Err(StylusError::InvalidArgument(format!(
                "--embedder lexical:{dim}: the dimension must be a number in 16..=1048576"
            ))),
        },
        ("bert", Some(location)) => {
            let location = expand_tilde(location);
            let path = Path::new(&location);
            if path.is_dir() || path.is_absolute() || location.starts_with('.') {
                stylus_refiner::bert::check_model_dir(path)
            } else {
                Ok(()) // a Hugging Face repo id, looked up when the embedder loads
            }
        }
        ("bert", None) => match default_minilm_dir() {
            Some(dir) => stylus_refiner::bert::check_model_dir(&dir),
            None => Err(StylusError::InvalidArgument(
                "--embedder bert: no model directory; give bert:DIR or set STYLUS_MINILM_DIR"
                    .into(),
            )),
        },
        (other, _) => Err(StylusError::InvalidArgument(format!(
            "--embedder {other}: expected lexical[:DIM], bert[:DIR] or openai[:MODEL]"
        ))),
    }
}

fn progress_bar(len: usize, what: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>10} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(what);
    bar
}

fn print_summary(summary: &Summary, out: &Path) {
    println!("cards read:   {}", summary.cards_read);
    println!("kept:         {}", summary.kept);
    for (reason, n) in &summary.skipped {
        println!("skipped:      {n:>6}  {reason}");
    }
    println!("malformed:    {}", summary.malformed);
    for message in summary.malformed_messages.iter().take(20) {
        println!("  {message}");
    }
    if summary.malformed_messages.len() > 20 {
        println!("  ... and {} more", summary.malformed_messages.len() - 20);
    }
    let c = &summary.counts;
    println!(
        "docs {}: {} to {} (refined {}, reused {}; embedded {}, reused {}; embedder {})",
        if summary.unchanged {
            "unchanged"
        } else {
            "written"
        },
        summary.kept,
        out.display(),
        c.docs_refined,
        c.docs_reused,
        c.vectors_embedded,
        c.vectors_reused,
        summary.embedder_id
    );
    let phases: Vec<String> = summary
        .phases_s
        .iter()
        .map(|(name, s)| format!("{name} {s:.2} s"))
        .collect();
    println!(
        "time:         {:.2} s ({})",
        summary.seconds,
        phases.join(", ")
    );
}
