//! `stylus eval selection`: the whole selection (retrieve + compose) against the reference Stylus
//! composer's picks on PartiPrompts, with the simple baselines measured in the same run.
//!
//! The reference picked Civitai model ids from a larger, later catalog: only picks that exist in
//! the store can be found, so the adapter measures use the prompts with at least one such pick
//! ("comparable prompts"); segmentation uses every prompt with reference topics.
//!
//! - retrieval: the share of comparable reference picks in our top 10 / top 150, and the same for
//!   the baseline BM25 over title + description + tags (the paper's document text);
//! - composer: adapters per prompt, precision (our picks the reference also made), recall
//!   (reference picks we made) and F1, against the retriever's top 2 / top 4 taken as the
//!   selection;
//! - people: selected characters/celebrities over all prompts (the rule says none unless a prompt
//!   asks for one);
//! - segmentation: topic F1 against the reference topics, and the content-word baseline.

use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use stylus_composer::relevance::FEATURE_NAMES;
use stylus_composer::segmentation_eval::content_words_baseline;
use stylus_composer::{
    LocalComposer, Prf, ReferenceRow, evaluate_segmentation, read_parti_csv, segment,
};
use stylus_core::{AdapterId, MaskStrategy, RetrievalFilter, StylusConfig, StylusError};
use stylus_retriever::{LexicalConfig, LexicalIndex};

use super::SelectionArgs;

#[derive(Debug, Serialize)]
struct Report {
    prompts: usize,
    comparable_prompts: usize,
    comparable_picks: usize,
    retrieval: Vec<RetrievalRow>,
    composer: Vec<ComposerRow>,
    /// Characters or celebrities selected over all prompts, and how many of those prompts asked
    /// for one (said "character", "celebrity" or "cosplay").
    people_selected: usize,
    adapters_per_prompt_all: f64,
    segmentation_topic_f1: f64,
    segmentation_baseline_topic_f1: f64,
    seconds: f64,
}

#[derive(Debug, Serialize)]
struct RetrievalRow {
    name: String,
    recall_at_10: f64,
    recall_at_150: f64,
}

#[derive(Debug, Serialize)]
struct ComposerRow {
    name: String,
    adapters_per_prompt: f64,
    precision: f64,
    recall: f64,
    f1: f64,
}

/// One comparable prompt's outcome, for `--details`.
#[derive(Debug, Serialize)]
struct Detail<'a> {
    prompt: &'a str,
    reference: Vec<(String, Vec<u64>)>,
    topics: Vec<(String, Vec<(u64, String)>)>,
    /// Our first candidates (Civitai ids), best first.
    candidates: Vec<u64>,
    /// Rank (0-based) of each comparable reference pick in our candidates, if there.
    ranks: Vec<(u64, Option<usize>)>,
    /// Every candidate that could serve a topic, with the relevance model's evidence: the
    /// input of `tools/fit_relevance.py`.
    fits: Vec<FitDetail>,
}

#[derive(Debug, Serialize)]
struct FitDetail {
    id: u64,
    topic: usize,
    relevance: f32,
    features: [f32; FEATURE_NAMES.len()],
}

/// How many of our candidates a `--details` line lists.
const DETAIL_CANDIDATES: usize = 30;

pub fn run(args: &SelectionArgs, config: &StylusConfig) -> Result<(), StylusError> {
    let started = Instant::now();
    let rows = read_parti_csv(&args.parti)?;
    let catalog = stylus::catalog::open(Some(&args.index), config, false)?;
    let docs = catalog.whole_docs()?;
    let ids: HashSet<u64> = docs.iter().filter_map(|d| civitai_id(d.id())).collect();
    // Our own handle on the local composer: `--details` asks it to explain its choices.
    let composer = Arc::new(
        LocalComposer::new(config.composer.clone()).with_embedder(catalog.embedder.clone()),
    );
    let stylus = stylus::Stylus::options()
        .mask_strategy(MaskStrategy::All)
        .custom_composer(composer.clone())
        .open(catalog, config)?;
    let baseline = LexicalIndex::build(
        docs,
        LexicalConfig {
            title_weight: 1.0,
            tags_weight: 1.0,
            trigger_words_weight: 0.0,
            description_weight: 1.0,
            ..LexicalConfig::default()
        },
    );
    let runtime = crate::commands::runtime()?;
    let mut details = match &args.details {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|e| StylusError::io(path, e))?,
        )),
        None => None,
    };

    let mut counts = Counts::default();
    let mut people_selected = 0;
    let mut adapters_all = 0;
    let mut prompts = 0;
    for row in &rows {
        if row.prompt.trim().is_empty() {
            continue;
        }
        prompts += 1;
        let candidates = runtime.block_on(stylus.retrieve(&row.prompt))?;
        let plan = runtime.block_on(stylus.select(&row.prompt))?;
        let ours: Vec<(u64, bool)> = plan
            .topics
            .iter()
            .flat_map(|t| &t.adapters)
            .filter_map(|a| {
                let person = a.category.is_some_and(|c| c.is_person());
                civitai_id(&a.id).map(|id| (id, person))
            })
            .collect();
        adapters_all += ours.len();
        people_selected += ours.iter().filter(|(_, person)| *person).count();

        let picks = reference_picks(row, &ids);
        if picks.is_empty() {
            continue;
        }
        let ranked: Vec<u64> = candidates
            .iter()
            .filter_map(|c| civitai_id(c.doc.id()))
            .collect();
        let bm25: Vec<u64> = baseline
            .search(&row.prompt, 150, &RetrievalFilter::default())?
            .into_iter()
            .filter_map(|hit| civitai_id(baseline.docs()[hit.index].id()))
            .collect();
        let chosen: HashSet<u64> = ours.iter().map(|(id, _)| *id).collect();
        counts.add(&picks, &ranked, &bm25, &chosen);
        if let Some(out) = details.as_mut() {
            let fits = runtime
                .block_on(composer.explain(&row.prompt, &candidates))?
                .into_iter()
                .map(|fit| FitDetail {
                    id: civitai_id(candidates[fit.candidate].doc.id()).unwrap_or(0),
                    topic: fit.topic,
                    relevance: fit.relevance,
                    features: fit.evidence.features(),
                })
                .collect();
            let detail = Detail {
                prompt: &row.prompt,
                reference: row
                    .topics
                    .iter()
                    .flatten()
                    .map(|t| (t.text.clone(), t.adapters.clone()))
                    .collect(),
                topics: plan
                    .topics
                    .iter()
                    .map(|t| {
                        let adapters = t
                            .adapters
                            .iter()
                            .map(|a| (civitai_id(&a.id).unwrap_or(0), a.title.clone()))
                            .collect();
                        (t.text.clone(), adapters)
                    })
                    .collect(),
                candidates: ranked.iter().take(DETAIL_CANDIDATES).copied().collect(),
                ranks: picks
                    .iter()
                    .map(|p| (*p, ranked.iter().position(|r| r == p)))
                    .collect(),
                fits,
            };
            let line = serde_json::to_string(&detail).map_err(|e| json_error(e.to_string()))?;
            writeln!(out, "{line}").map_err(|e| StylusError::io("<details>", e))?;
        }
    }
    if let Some(out) = details.as_mut() {
        out.flush().map_err(|e| StylusError::io("<details>", e))?;
    }

    let segmentation =
        evaluate_segmentation(&rows, |p| segment(p).into_iter().map(|s| s.text).collect());
    let segmentation_baseline = evaluate_segmentation(&rows, content_words_baseline);
    let report = Report {
        prompts,
        comparable_prompts: counts.prompts,
        comparable_picks: counts.picks,
        retrieval: vec![
            counts.recall("ours", |c| &c.ranked_hits),
            counts.recall("BM25 title+description+tags", |c| &c.bm25_hits),
        ],
        composer: vec![
            counts.composer("ours", counts.chosen, counts.chosen_hits),
            counts.composer("retriever top-2", counts.top2, counts.top2_hits),
            counts.composer("retriever top-4", counts.top4, counts.top4_hits),
        ],
        people_selected,
        adapters_per_prompt_all: adapters_all as f64 / prompts.max(1) as f64,
        segmentation_topic_f1: segmentation.topic.f1,
        segmentation_baseline_topic_f1: segmentation_baseline.topic.f1,
        seconds: started.elapsed().as_secs_f64(),
    };
    if args.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| json_error(e.to_string()))?;
        println!("{json}");
    } else {
        print_report(&report);
    }
    Ok(())
}

/// Hit counts over the comparable prompts.
#[derive(Debug, Default)]
struct Counts {
    prompts: usize,
    picks: usize,
    /// Picks in the top 10 and top 150 of our candidates and of the BM25 baseline.
    ranked_hits: [usize; 2],
    bm25_hits: [usize; 2],
    chosen: usize,
    chosen_hits: usize,
    top2: usize,
    top2_hits: usize,
    top4: usize,
    top4_hits: usize,
}

impl Counts {
    fn add(&mut self, picks: &HashSet<u64>, ranked: &[u64], bm25: &[u64], chosen: &HashSet<u64>) {
        let hits =
            |list: &[u64], n: usize| list.iter().take(n).filter(|i| picks.contains(i)).count();
        self.prompts += 1;
        self.picks += picks.len();
        self.ranked_hits[0] += hits(ranked, 10);
        self.ranked_hits[1] += hits(ranked, 150);
        self.bm25_hits[0] += hits(bm25, 10);
        self.bm25_hits[1] += hits(bm25, 150);
        self.chosen += chosen.len();
        self.chosen_hits += chosen.intersection(picks).count();
        self.top2 += ranked.len().min(2);
        self.top2_hits += hits(ranked, 2);
        self.top4 += ranked.len().min(4);
        self.top4_hits += hits(ranked, 4);
    }

    fn recall(&self, name: &str, hits: impl Fn(&Self) -> &[usize; 2]) -> RetrievalRow {
        let [at10, at150] = *hits(self);
        RetrievalRow {
            name: name.into(),
            recall_at_10: at10 as f64 / self.picks.max(1) as f64,
            recall_at_150: at150 as f64 / self.picks.max(1) as f64,
        }
    }

    fn composer(&self, name: &str, chosen: usize, hits: usize) -> ComposerRow {
        let prf = Prf::from_counts(hits, chosen, self.picks);
        ComposerRow {
            name: name.into(),
            adapters_per_prompt: chosen as f64 / self.prompts.max(1) as f64,
            precision: prf.precision,
            recall: prf.recall,
            f1: prf.f1,
        }
    }
}

/// The reference's picks for `row` that the store has.
fn reference_picks(row: &ReferenceRow, ids: &HashSet<u64>) -> HashSet<u64> {
    row.topics
        .iter()
        .flatten()
        .flat_map(|t| &t.adapters)
        .copied()
        .filter(|id| ids.contains(id))
        .collect()
}

fn civitai_id(id: &AdapterId) -> Option<u64> {
    id.civitai()
}

fn json_error(message: String) -> StylusError {
    StylusError::Json {
        path: "<report>".into(),
        line: None,
        message,
        source: None,
    }
}

fn print_report(report: &Report) {
    println!(
        "{} prompts; {} comparable (reference picks in the store: {})",
        report.prompts, report.comparable_prompts, report.comparable_picks
    );
    println!("retrieval (share of reference picks):");
    for r in &report.retrieval {
        println!(
            "  {:<32} top-10 {:.3}  top-150 {:.3}",
            r.name, r.recall_at_10, r.recall_at_150
        );
    }
    println!("composer (comparable prompts):");
    for c in &report.composer {
        println!(
            "  {:<32} adapters/prompt {:.2}  precision {:.3}  recall {:.3}  F1 {:.3}",
            c.name, c.adapters_per_prompt, c.precision, c.recall, c.f1
        );
    }
    println!(
        "all prompts: {:.2} adapters per prompt, {} characters/celebrities selected",
        report.adapters_per_prompt_all, report.people_selected
    );
    println!(
        "segmentation topic F1 {:.3} (baseline content words {:.3})",
        report.segmentation_topic_f1, report.segmentation_baseline_topic_f1
    );
    println!("{:.1} s", report.seconds);
}
