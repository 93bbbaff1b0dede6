//! `LocalComposer`: an offline, deterministic composer.
//!
//! Before composing, it reranks what the retriever found ([`Composer::rerank`]): a candidate's
//! retrieval rank plus the share of its name that the prompt says, and people nobody asked for
//! last. That order is the main evidence of what the prompt is about.
//!
//! It cuts the prompt into topics with [`crate::segment`], scores every (topic, candidate) pair by
//! how much of the topic the candidate's title, tags and trigger words cover (or, failing that,
//! whether its name says a word of the topic), and walks the candidates in the reranked order,
//! each taking its best topic, under the paper's rules and a budget:
//! - a pair is considered only when its score reaches [`LocalComposer::min_score`] and comes
//!   close to the best pair of its topic (an adapter broader than the topic, matching only its
//!   head word, does not ride along with an exact match);
//! - an adapter narrower than (or beside) the topic is rejected: the word its title names it by
//!   (its subject: "horse" in "Riding a Horse", the head before a linking word: "boots" in
//!   "These Boots Are Made For Walking") must be in the prompt, so "riding" in "a man
//!   riding a cat" does not get a horse-riding adapter, nor "rain" an umbrella. Style adapters
//!   are exempt (their names are looks, not things);
//! - a style adapter off a style topic must be named whole by the prompt ("South Park Style" is
//!   no match for "park");
//! - at most `max_adapters_per_topic` adapters per topic and `max_adapters` in all (the budget;
//!   "no adapter" is a normal answer for a topic), each adapter at most once, on its best topic;
//! - characters and celebrities only when the prompt asks for one ([`crate::people`]);
//! - at most `max_style_adapters` style adapters in the whole composition.
//!
//! With an embedder ([`LocalComposer::with_embedder`], the catalog's), topics and candidate names
//! are compared as vectors too: a semantic embedder then matches synonyms the words miss
//! ("kitten" for a cat topic) and ranks near-ties by topic-level similarity. Descriptions are not
//! matched on purpose: they mention many things an adapter is not about.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use stylus_core::blocking::run_cpu;
use stylus_core::{
    AdapterDoc, AdapterId, Candidate, Category, Composer, ComposerConfig, Composition, Embedder,
    Result, StylusError, Topic, TopicAdapters,
};

use serde::Serialize;

use crate::people;
use crate::relevance::{DEFAULT_MIN_RELEVANCE_FIRST, DEFAULT_MIN_RELEVANCE_NEXT, Evidence};
use crate::segment::{Segment, SegmentKind, is_tag_list, segment};

/// The default [`LocalComposer::min_score`]: the topic's head word (or most of a topic whose
/// head is generic, like "painting") must be matched.
pub const DEFAULT_MIN_SCORE: f32 = 0.55;

/// The default [`LocalComposer::synonym_similarity`]: the cosine at which an embedder's vectors of
/// a topic and of a candidate's name (or subject word) count as the same thing. Set for
/// MiniLM-class models, where "cat"/"kitten" is 0.79 and "car"/"automobile" 0.87 while
/// "riding"/"riding a horse" is 0.68 and "rain"/"umbrella" 0.60 (all-MiniLM-L6-v2). Hashed TF-IDF
/// vectors of different words are orthogonal, so with the lexical embedder it only confirms
/// word matches.
pub const DEFAULT_SYNONYM_SIMILARITY: f32 = 0.75;

/// Share of a topic's match carried by its head word (the last word).
const HEAD_WEIGHT: f32 = 0.6;
/// The same for generic heads ("oil painting": the "oil" matters more than the "painting").
const GENERIC_HEAD_WEIGHT: f32 = 0.2;
/// Bonus when the candidate's category fits the kind of topic (a style adapter for a style topic).
const CATEGORY_BONUS: f32 = 0.1;
/// A candidate must score within this of the best candidate of its topic: once "cowboy hat" has
/// a cowboy-hat adapter, a wizard hat (only the head word matches) is not another fit.
const TOPIC_MARGIN: f32 = 0.25;
/// Weight of the retriever's similarity, which only breaks near-ties between equal matches when
/// there is no embedder.
const RETRIEVAL_WEIGHT: f32 = 0.05;
/// Weight of the topic-to-name similarity when there is an embedder (it replaces the
/// retriever's prompt-level score as the tie-breaker).
const SEMANTIC_WEIGHT: f32 = 0.1;
/// Bonus per share of the candidate's name found in the prompt: "Cat" beats "Tabby Cat" for "a
/// cat", the adapter that adds less the prompt did not ask for.
const NAME_COVERAGE_WEIGHT: f32 = 0.05;

/// [`LocalComposer`]'s rerank: a candidate at retrieval rank `r` starts at
/// `RERANK_K / (RERANK_K + r)` (1 for the first, 0.29 for the 150th, the shape of reciprocal rank
/// fusion)...
const RERANK_K: f32 = 60.0;
/// ...and gains this times the share of its name that the prompt says ("Butterfly" for "a
/// butterfly": the whole name, +1). A name is the strongest evidence a card offers: on the
/// PartiPrompts development set, 47% of the reference composer's picks have a prompt word in
/// their name, 18% in their tags (docs/benchmarks.md, Selection). Weights 0.7 to 2 do the same
/// within 1.5 points of recall@10.
const RERANK_NAME_WEIGHT: f32 = 1.0;
/// ...both this and the person penalty below scaled by `(RERANK_PROMPT_WORDS / n)^2` for prompts
/// of `n` > 8 content words: in a tag soup of forty words ("1girl, solo, long hair, ...") a word
/// shared with a name says little, the prompt's own ranking is already precise, and it often asks
/// for a character by a trigger word (Civitai sample prompts, docs/benchmarks.md, Retrieval).
const RERANK_PROMPT_WORDS: f32 = 8.0;
/// ...and a person the prompt does not ask for loses this, so that adapters the composer could
/// use come first (0.3 to 1 are equal on PartiPrompts). Not more: a prompt can ask for a
/// character with a trigger word our rule cannot tell from a common one ("hmn1").
const RERANK_PERSON_PENALTY: f32 = 0.3;

/// ...and a candidate one of whose made-up trigger words the prompt says gains this: a prompt
/// that says "SteamPunkAI coffee machine" asks for the adapter that token belongs to more than
/// for one named "Coffee Machine" (Civitai sample prompts that are not tag lists,
/// docs/benchmarks.md, Selection). Trigger words in plain words ("watercolor", "a man") say
/// nothing the name and the retrieval did not.
const RERANK_TRIGGER_WEIGHT: f32 = 1.0;

/// The least length of a one-word trigger that counts as made up because no other candidate
/// uses it ([`says_a_trigger`]): "sks", "zwx" and "qxj" are such triggers (3 did better than 5
/// on both development sets, docs/benchmarks.md, Selection).
const DISTINCT_TRIGGER_MIN: usize = 3;

/// The most words of a trigger entry whose words can count as made up by [`says_a_trigger`]'s
/// rule for words no other candidate uses ("sks woman", "rotungwoka person").
const DISTINCT_TRIGGER_MAX_WORDS: usize = 3;

/// True when the prompt (its lower-cased words) says one of the candidate's made-up trigger
/// words: a token with digits or a capital after the first letter ([`people::is_made_up_token`]:
/// "Cu73Cre4ture", "SteamPunkAI", "HibanaFF"), `_`-joined words ("robot_maid"), or a word of at
/// least [`DISTINCT_TRIGGER_MIN`] characters in a short trigger entry that no other candidate
/// has in its title, tags or trigger words (`used_by_one`: "romapunkai", "debannwoll",
/// "1nf3rnalAI"; a plain word such as "watercolor" is used by many candidates of a prompt that
/// says it).
fn says_a_trigger(
    prompt_words: &[String],
    doc: &AdapterDoc,
    used_by_one: &dyn Fn(&str) -> bool,
) -> bool {
    let entries = doc.card.trigger_words.iter().flat_map(|raw| raw.split(','));
    // A word of a short entry ("romapunkai", "sks woman") can be a made-up token without
    // looking like one; a word of a longer one ("asian woman with wavy long hair") is a plain
    // word.
    let distinct = entries
        .clone()
        .filter(|entry| entry.split_whitespace().count() <= DISTINCT_TRIGGER_MAX_WORDS)
        .flat_map(str::split_whitespace)
        .filter(|token| {
            token.chars().count() >= DISTINCT_TRIGGER_MIN
                && token.chars().all(char::is_alphanumeric)
                && token.chars().any(char::is_alphabetic)
                && used_by_one(&token.to_lowercase())
        });
    entries
        .flat_map(|entry| entry.split(' '))
        .map(str::trim)
        .filter(|token| {
            people::is_made_up_token(token)
                || (token.contains('_') && token.starts_with(char::is_alphabetic))
        })
        .chain(distinct)
        .map(people::lower_words)
        .any(|trigger| {
            !trigger.is_empty() && prompt_words.windows(trigger.len()).any(|w| w == trigger)
        })
}

/// For each word of `prompt_words`, how many of the candidates have it among the words of their
/// title, tags and trigger words.
fn candidates_using(prompt_words: &[String], candidates: &[Candidate]) -> HashMap<String, usize> {
    let wanted: HashSet<&str> = prompt_words.iter().map(String::as_str).collect();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for candidate in candidates {
        let card = &candidate.doc.card;
        let used: HashSet<String> = std::iter::once(&card.title)
            .chain(&card.tags)
            .chain(&card.trigger_words)
            .flat_map(|text| people::lower_words(text))
            .filter(|w| wanted.contains(w.as_str()))
            .collect();
        for word in used {
            *counts.entry(word).or_default() += 1;
        }
    }
    counts
}

/// The offline composer (see the module docs for its rules).
#[derive(Clone)]
pub struct LocalComposer {
    config: ComposerConfig,
    min_score: f32,
    synonym_similarity: f32,
    /// Least relevance of the first adapter and of each further one ([`crate::relevance`]).
    min_relevance: (f32, f32),
    semantics: Option<Arc<Semantics>>,
}

impl std::fmt::Debug for LocalComposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalComposer")
            .field("config", &self.config)
            .field("min_score", &self.min_score)
            .field("synonym_similarity", &self.synonym_similarity)
            .field("min_relevance", &self.min_relevance)
            .field(
                "embedder",
                &self.semantics.as_ref().map(|s| s.embedder.id()),
            )
            .finish()
    }
}

impl LocalComposer {
    pub fn new(config: ComposerConfig) -> Self {
        Self {
            config,
            min_score: DEFAULT_MIN_SCORE,
            synonym_similarity: DEFAULT_SYNONYM_SIMILARITY,
            min_relevance: (DEFAULT_MIN_RELEVANCE_FIRST, DEFAULT_MIN_RELEVANCE_NEXT),
            semantics: None,
        }
    }

    /// Compares topics and candidate names with this embedder too (see the module docs).
    /// Candidate vectors are cached per adapter, so a catalog is embedded once per process.
    pub fn with_embedder(mut self, embedder: Arc<dyn Embedder>) -> Self {
        self.semantics = Some(Arc::new(Semantics {
            embedder,
            cache: Mutex::new(HashMap::new()),
        }));
        self
    }

    /// Sets the least score a (topic, candidate) pair needs (0..1.2; default
    /// [`DEFAULT_MIN_SCORE`]).
    pub fn with_min_score(mut self, min_score: f32) -> Self {
        self.min_score = min_score;
        self
    }

    /// Sets the cosine at which the embedder calls a topic and a name the same thing (default
    /// [`DEFAULT_SYNONYM_SIMILARITY`]).
    pub fn with_synonym_similarity(mut self, similarity: f32) -> Self {
        self.synonym_similarity = similarity;
        self
    }

    /// Sets the least relevance ([`crate::relevance`], log-odds) of the composition's first
    /// adapter and of each further one; `f32::NEG_INFINITY` for both takes every candidate that
    /// passes the rules, up to the budget.
    pub fn with_min_relevance(mut self, first: f32, next: f32) -> Self {
        self.min_relevance = (first, next);
        self
    }

    pub fn min_score(&self) -> f32 {
        self.min_score
    }

    /// The composition from words alone (no embedder), computed synchronously.
    pub fn compose_now(&self, prompt: &str, candidates: &[Candidate]) -> Composition {
        self.assign(prompt, segment(prompt), candidates, None)
    }

    /// Scores the pairs and assigns candidates (see the module docs); `similarity` is the
    /// embedder's view, when there is one.
    fn assign(
        &self,
        prompt: &str,
        segments: Vec<Segment>,
        candidates: &[Candidate],
        similarity: Option<&Similarity>,
    ) -> Composition {
        let fits = self.fits(prompt, &segments, candidates, similarity);
        let assigned = self.choose(segments.len(), candidates, fits);
        Composition {
            topics: segments
                .into_iter()
                .zip(assigned)
                .map(|(s, cs)| TopicAdapters {
                    topic: Topic { text: s.text },
                    adapters: cs.into_iter().map(|c| candidates[c].doc.clone()).collect(),
                })
                .collect(),
        }
    }

    /// The candidates that could serve a topic under the rules, each with its best topic and
    /// the [`Evidence`] the relevance model weighs, in candidate order.
    fn fits(
        &self,
        prompt: &str,
        segments: &[Segment],
        candidates: &[Candidate],
        similarity: Option<&Similarity>,
    ) -> Vec<Fit> {
        let topics: Vec<TopicTerms> = segments.iter().map(TopicTerms::new).collect();
        let prompt_words = people::lower_words(prompt);
        let prompt_stems: HashSet<String> = prompt_words.iter().map(|w| stem(w)).collect();
        let topic_words: HashSet<&String> = topics.iter().flat_map(|t| &t.words).collect();

        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        let mut terms_of: HashMap<usize, CandidateTerms> = HashMap::new();
        for (c, candidate) in candidates.iter().enumerate() {
            let doc = &candidate.doc;
            if self.config.block_characters
                && people::is_person(doc)
                && !people::asks_for(&prompt_words, doc)
            {
                continue;
            }
            let terms = CandidateTerms::new(doc);
            // "Rainy" names rain (an adjective's `y` is dropped too); "glasses" is in
            // "sunglasses" (a compound ending in the word).
            let in_prompt = |w: &String| {
                prompt_stems.contains(w)
                    || w.strip_suffix('y')
                        .is_some_and(|w| prompt_stems.contains(w))
                    || (w.len() >= 4 && prompt_stems.iter().any(|p| p.ends_with(w.as_str())))
            };
            let subject_in_prompt = terms.subject.as_ref().is_none_or(in_prompt)
                || terms.qualifier.as_ref().is_some_and(in_prompt);
            // A style is one look, named as a whole: "South Park Style" is not a park, "Chainsaw
            // Man Anime Style" not a man, "Relaxing on Hammock" (tagged style) not a beach. Off a
            // style topic, every word of its name that is spelled in ASCII letters must be in the
            // prompt (names in other scripts leave it to the tags); on a style topic ("in the
            // style of Monet") part of the name will do ("Claude Monet Style").
            let style_named = terms
                .name
                .iter()
                .filter(|w| {
                    w.chars().all(|c| c.is_ascii_alphabetic())
                        && !STYLE_FILLERS.contains(&w.as_str())
                        && !GENERIC_SUBJECTS.contains(&w.as_str())
                        && !GENERIC_HEADS.contains(&w.as_str())
                })
                .all(|w| in_prompt(&stem(w)));
            // The rules a (topic, candidate) pair must pass. Styles name looks, not things, so
            // the subject rule is theirs only off a style topic, as the whole-name rule;
            // people passed their own rule above.
            let allowed = |topic: &TopicTerms| match doc.category {
                Category::Style => style_named || topic.kind == SegmentKind::Style,
                _ => people::is_person(doc) || subject_in_prompt,
            };
            let mut matched = false;
            for (t, topic) in topics.iter().enumerate() {
                let same_name = similarity.map(|s| s.name[t][c] >= self.synonym_similarity);
                // An embedder's synonym of the topic stands in for the subject word.
                let same_subject = doc.category != Category::Style
                    && similarity.is_some_and(|s| s.subject[t][c] >= self.synonym_similarity);
                if !allowed(topic) && !same_subject {
                    continue;
                }
                let mut score = topic.match_score(&terms);
                if score <= 0.0 {
                    if same_name != Some(true) {
                        continue;
                    }
                    // A synonym of the whole topic: as good as a head-word match.
                    score = HEAD_WEIGHT;
                }
                let tie_breaker = match similarity {
                    Some(s) => SEMANTIC_WEIGHT * s.name[t][c].clamp(0.0, 1.0),
                    None => RETRIEVAL_WEIGHT * candidate.score.clamp(0.0, 1.0),
                };
                let score = score
                    + category_bonus(topic.kind, doc.category)
                    + NAME_COVERAGE_WEIGHT * terms.name_coverage(&prompt_stems)
                    + tie_breaker;
                if score >= self.min_score {
                    pairs.push((score, t, c));
                    matched = true;
                }
            }
            // Name evidence: a candidate whose name is said by a topic ("PunkPunk" for "punk rock
            // squirrel") fits that topic even when its title, tags and triggers do not cover
            // the topic's head, as long as it passes the rules above. It ranks below every word
            // match.
            if !matched {
                let name: Vec<String> = terms
                    .name
                    .iter()
                    .filter(|w| !GENERIC_SUBJECTS.contains(&w.as_str()))
                    .map(|w| stem(w))
                    .collect();
                // The name says the topic's head, or the topic says the whole name: a word
                // shared by accident ("double" in "Double V" and "double decker bus") is not it.
                let says = |topic: &TopicTerms| {
                    topic.words.last().is_some_and(|head| name.contains(head))
                        || (!name.is_empty() && name.iter().all(|w| topic.words.contains(w)))
                };
                if let Some(t) = topics
                    .iter()
                    .position(|topic| allowed(topic) && says(topic))
                {
                    pairs.push((self.min_score, t, c));
                    matched = true;
                }
            }
            if matched {
                terms_of.insert(c, terms);
            }
        }
        // Each candidate's best topic first; ties in prompt order (deterministic).
        pairs.sort_by(|a, b| a.2.cmp(&b.2).then(b.0.total_cmp(&a.0)).then(a.1.cmp(&b.1)));
        let mut best = vec![f32::NEG_INFINITY; segments.len()];
        for &(score, t, _) in &pairs {
            best[t] = best[t].max(score);
        }
        let mut fits: Vec<Fit> = Vec::new();
        let mut seen = vec![false; candidates.len()];
        for (score, t, c) in pairs {
            // A candidate serves its best topic or none.
            if std::mem::replace(&mut seen[c], true) || score < best[t] - TOPIC_MARGIN {
                continue;
            }
            let terms = &terms_of[&c];
            let doc = &candidates[c].doc;
            let share = |found: &dyn Fn(&String) -> bool| {
                topic_words.iter().filter(|w| found(w)).count() as f32
                    / topic_words.len().max(1) as f32
            };
            let name_stems: HashSet<String> = terms.name.iter().map(|w| stem(w)).collect();
            let tag_stems: HashSet<String> = doc
                .card
                .tags
                .iter()
                .flat_map(|t| words(t))
                .map(|w| stem(&w))
                .collect();
            let trigger_stems: HashSet<String> = doc
                .card
                .trigger_words
                .iter()
                .flat_map(|t| words(t))
                .map(|w| stem(&w))
                .collect();
            let evidence = Evidence {
                rank: c,
                name_said: terms.name_coverage(&prompt_stems),
                topic_said: share(&|w| name_stems.contains(w)),
                tags_said: share(&|w| tag_stems.contains(w)),
                triggers_said: share(&|w| trigger_stems.contains(w)),
                pair_score: score,
                category: doc.category,
                downloads: doc.card.stats.downloads,
            };
            fits.push(Fit {
                candidate: c,
                topic: t,
                relevance: evidence.relevance(),
                evidence,
            });
        }
        fits
    }

    /// Walks the fits from the most relevant, each on its topic, under the budget and the
    /// relevance thresholds; returns the chosen candidates per topic.
    fn choose(
        &self,
        topics: usize,
        candidates: &[Candidate],
        mut fits: Vec<Fit>,
    ) -> Vec<Vec<usize>> {
        // Stable: equal relevance keeps the reranked order.
        fits.sort_by(|a, b| b.relevance.total_cmp(&a.relevance));
        let mut assigned: Vec<Vec<usize>> = vec![Vec::new(); topics];
        let mut chosen = 0;
        let mut styles = 0;
        for fit in fits {
            let (t, c) = (fit.topic, fit.candidate);
            let doc = &candidates[c].doc;
            let least = if chosen == 0 {
                self.min_relevance.0
            } else {
                self.min_relevance.1
            };
            let is_style = doc.category == Category::Style;
            if fit.relevance < least
                || assigned[t].len() >= self.config.max_adapters_per_topic
                || (is_style && styles >= self.config.max_style_adapters)
                || assigned
                    .iter()
                    .flatten()
                    .any(|&o| candidates[o].doc.id() == doc.id())
            {
                continue;
            }
            if chosen >= self.config.max_adapters {
                break;
            }
            chosen += 1;
            styles += usize::from(is_style);
            assigned[t].push(c);
        }
        assigned
    }

    /// The evidence behind a composition: every candidate that could serve a topic, with that
    /// topic (an index into [`crate::segment`]'s topics) and its relevance. For evaluation and
    /// for fitting the relevance model (`stylus eval selection --details`).
    pub async fn explain(&self, prompt: &str, candidates: &[Candidate]) -> Result<Vec<Fit>> {
        let segments = segment(prompt);
        let similarity = match &self.semantics {
            Some(semantics) => Some(semantics.similarity(&segments, candidates).await?),
            None => None,
        };
        Ok(self.fits(prompt, &segments, candidates, similarity.as_ref()))
    }
}

/// A candidate that could serve a topic (see [`LocalComposer::explain`]).
#[derive(Debug, Clone, Serialize)]
pub struct Fit {
    /// Index into the candidates.
    pub candidate: usize,
    /// Index into the prompt's topics.
    pub topic: usize,
    pub evidence: Evidence,
    /// [`Evidence::relevance`].
    pub relevance: f32,
}

#[async_trait]
impl Composer for LocalComposer {
    async fn compose(&self, prompt: &str, candidates: &[Candidate]) -> Result<Composition> {
        let segments = segment(prompt);
        let similarity = match &self.semantics {
            Some(semantics) => Some(semantics.similarity(&segments, candidates).await?),
            None => None,
        };
        // Milliseconds of word matching for 150 candidates: off the runtime's other tasks.
        Ok(run_cpu(|| {
            self.assign(prompt, segments, candidates, similarity.as_ref())
        }))
    }

    /// No topic queries for a tag list: its tags are already its topics' words, and fusing
    /// their rankings pushes the adapter its trigger words name off the top.
    fn topic_queries(&self, prompt: &str) -> Vec<String> {
        if is_tag_list(prompt) {
            return Vec::new();
        }
        segment(prompt).into_iter().map(|s| s.text).collect()
    }

    /// A tag list keeps the retriever's order: it names its adapter by trigger words, which the
    /// retriever already matched, and the name evidence of a few shared words only reorders
    /// near-ties at the top (Civitai sample prompts, docs/benchmarks.md, Selection).
    fn rerank(&self, prompt: &str, candidates: Vec<Candidate>) -> Vec<Candidate> {
        if is_tag_list(prompt) {
            return candidates;
        }
        let prompt_words = people::lower_words(prompt);
        let prompt_stems: HashSet<String> = words(prompt)
            .filter(|w| !TOPIC_STOPWORDS.contains(&w.as_str()))
            .map(|w| stem(&w))
            .collect();
        // 1 up to RERANK_PROMPT_WORDS content words, then falling with the square of the excess.
        let natural = (RERANK_PROMPT_WORDS / prompt_stems.len() as f32)
            .min(1.0)
            .powi(2);
        let name_weight = RERANK_NAME_WEIGHT * natural;
        let person_penalty = RERANK_PERSON_PENALTY * natural;
        let trigger_weight = RERANK_TRIGGER_WEIGHT * natural;
        let using = candidates_using(&prompt_words, &candidates);
        let used_by_one = |word: &str| using.get(word) == Some(&1);
        let mut scored: Vec<(f32, Candidate)> = candidates
            .into_iter()
            .enumerate()
            .map(|(rank, candidate)| {
                let doc = &candidate.doc;
                let terms = CandidateTerms::new(doc);
                let said = if terms.name_said_run_together(&prompt_words) {
                    1.0
                } else {
                    terms.name_coverage(&prompt_stems)
                };
                let mut score = RERANK_K / (RERANK_K + rank as f32) + name_weight * said;
                // Saying a person's own trigger ("D14bl0", "debannwoll") asks for them.
                if says_a_trigger(&prompt_words, doc, &used_by_one) {
                    score += trigger_weight;
                } else if self.config.block_characters
                    && people::is_person(doc)
                    && !people::asks_for(&prompt_words, doc)
                {
                    score -= person_penalty;
                }
                (score, candidate)
            })
            .collect();
        // Stable: equal scores keep the retriever's order.
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.into_iter().map(|(_, candidate)| candidate).collect()
    }
}

/// An embedder and the vectors of the candidates it has seen.
struct Semantics {
    embedder: Arc<dyn Embedder>,
    cache: Mutex<HashMap<AdapterId, Arc<NameVectors>>>,
}

/// A candidate's name (title without versions and brackets) and subject word, embedded.
struct NameVectors {
    name: PackedVector,
    subject: Option<PackedVector>,
}

/// A cached vector, kept as its non-zero entries when those are few: a hashed TF-IDF vector of a
/// two-word name has a handful of 4,096 entries set, and a catalog of 75K names must not cost
/// gigabytes.
enum PackedVector {
    Dense(Vec<f32>),
    Sparse(Vec<(u32, f32)>),
}

impl PackedVector {
    fn pack(vector: Vec<f32>) -> Self {
        let non_zero = vector.iter().filter(|x| **x != 0.0).count();
        if non_zero * 4 > vector.len() {
            return Self::Dense(vector);
        }
        Self::Sparse(
            vector
                .iter()
                .enumerate()
                .filter(|(_, x)| **x != 0.0)
                .map(|(i, x)| (i as u32, *x))
                .collect(),
        )
    }

    /// Dot product with a dense vector of the same dimension.
    fn dot(&self, other: &[f32]) -> f32 {
        match self {
            Self::Dense(v) => v.iter().zip(other).map(|(x, y)| x * y).sum(),
            Self::Sparse(entries) => entries
                .iter()
                .map(|&(i, x)| x * other.get(i as usize).copied().unwrap_or(0.0))
                .sum(),
        }
    }
}

/// Cosines per (topic, candidate): with the candidate's name and with its subject word.
struct Similarity {
    name: Vec<Vec<f32>>,
    subject: Vec<Vec<f32>>,
}

impl Semantics {
    async fn similarity(
        &self,
        segments: &[Segment],
        candidates: &[Candidate],
    ) -> Result<Similarity> {
        let topic_texts: Vec<String> = segments.iter().map(|s| s.text.clone()).collect();
        let topics = self.embed(topic_texts).await?;
        let names = self.name_vectors(candidates).await?;
        let table = |pick: &dyn Fn(&NameVectors) -> Option<&PackedVector>| -> Vec<Vec<f32>> {
            topics
                .iter()
                .map(|t| {
                    names
                        .iter()
                        .map(|n| pick(n).map_or(0.0, |v| v.dot(t)))
                        .collect()
                })
                .collect()
        };
        Ok(Similarity {
            name: table(&|n| Some(&n.name)),
            subject: table(&|n| n.subject.as_ref()),
        })
    }

    /// The candidates' name vectors, embedding (in one batch) those not cached yet.
    async fn name_vectors(&self, candidates: &[Candidate]) -> Result<Vec<Arc<NameVectors>>> {
        let missing: Vec<&AdapterDoc> = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            let mut seen = HashSet::new();
            candidates
                .iter()
                .map(|c| c.doc.as_ref())
                .filter(|d| !cache.contains_key(d.id()) && seen.insert(d.id()))
                .collect()
        };
        if !missing.is_empty() {
            // (name text, subject word) per card: the title's name, else the whole title.
            let texts: Vec<(String, Option<String>)> = missing
                .iter()
                .map(|doc| {
                    let terms = CandidateTerms::new(doc);
                    let name = if terms.name.is_empty() {
                        doc.card.title.clone()
                    } else {
                        terms.name.join(" ")
                    };
                    (name, terms.subject_word)
                })
                .collect();
            let flat: Vec<String> = texts
                .iter()
                .flat_map(|(name, subject)| std::iter::once(name.clone()).chain(subject.clone()))
                .collect();
            // `embed` checked that one vector came back per text.
            let mut vectors = self.embed(flat).await?.into_iter().map(PackedVector::pack);
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            for (doc, (_, subject)) in missing.into_iter().zip(&texts) {
                let name = vectors.next().unwrap_or(PackedVector::Sparse(Vec::new()));
                let subject = subject.as_ref().and_then(|_| vectors.next());
                cache.insert(doc.id().clone(), Arc::new(NameVectors { name, subject }));
            }
        }
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        Ok(candidates
            .iter()
            .map(|c| Arc::clone(&cache[c.doc.id()]))
            .collect())
    }

    /// Embeds `texts`, checking that one vector of the embedder's dimension comes back for each.
    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        let vectors = self.embedder.embed(&texts).await?;
        let dim = self.embedder.dim();
        if vectors.len() != texts.len() || vectors.iter().any(|v| v.len() != dim) {
            return Err(StylusError::ModelReply {
                service: self.embedder.id(),
                attempts: 1,
                message: format!(
                    "the composer asked for {} vectors of dimension {dim}, got {}",
                    texts.len(),
                    vectors.len()
                ),
            });
        }
        Ok(vectors)
    }
}

fn category_bonus(kind: SegmentKind, category: Category) -> f32 {
    let fits = match kind {
        SegmentKind::Style => category == Category::Style,
        SegmentKind::Setting => matches!(category, Category::Background | Category::Building),
        SegmentKind::Action => matches!(category, Category::Action | Category::Pose),
        SegmentKind::Thing | SegmentKind::Quote => !matches!(category, Category::Style),
    };
    if fits { CATEGORY_BONUS } else { 0.0 }
}

/// A topic's words, stemmed, with its head last.
struct TopicTerms {
    kind: SegmentKind,
    words: Vec<String>,
}

impl TopicTerms {
    fn new(segment: &Segment) -> Self {
        Self {
            kind: segment.kind,
            words: words(&segment.text)
                .filter(|w| !TOPIC_STOPWORDS.contains(&w.as_str()))
                .map(|w| stem(&w))
                .collect(),
        }
    }

    /// How much of the topic the candidate covers, 0..1: the head word carries [`HEAD_WEIGHT`]
    /// (less when it is generic), the modifiers share the rest.
    fn match_score(&self, terms: &CandidateTerms) -> f32 {
        let Some((head, modifiers)) = self.words.split_last() else {
            return 0.0;
        };
        let head_weight = if modifiers.is_empty() {
            1.0
        } else if GENERIC_HEADS.contains(&head.as_str()) {
            GENERIC_HEAD_WEIGHT
        } else {
            HEAD_WEIGHT
        };
        let head_hit = terms.matches(head, &self.words);
        let modifier_hits = modifiers
            .iter()
            .filter(|w| terms.matches(w, &self.words))
            .count();
        let mut score = if head_hit { head_weight } else { 0.0 };
        if !modifiers.is_empty() {
            score += (1.0 - head_weight) * modifier_hits as f32 / modifiers.len() as f32;
        }
        // A specific head that is not matched is a different thing ("red car" vs "red dress").
        if !head_hit && head_weight >= HEAD_WEIGHT {
            return 0.0;
        }
        score
    }
}

/// Heads too generic to decide a match alone.
const GENERIC_HEADS: &[&str] = &[
    "painting",
    "drawing",
    "style",
    "art",
    "artwork",
    "illustration",
    "photo",
    "photograph",
    "photography",
    "render",
    "design",
    "picture",
    "image",
    "effect",
    "look",
];

/// Words at the end of adapter names that say what kind of adapter it is, not what it shows
/// ("Shoal Concept", "Neon Effect", "Cat Pack"); the subject is the word before them.
const GENERIC_SUBJECTS: &[&str] = &[
    "concept",
    "collection",
    "pack",
    "set",
    "series",
    "effects",
    "detail",
    "details",
    "tweaker",
    "helper",
    "enhancer",
    "slider",
    "aesthetic",
    "theme",
    "themed",
    "mix",
    "pose",
    "poses",
    "day",
    "night",
    "scene",
    "scenery",
    "vibe",
    "vibes",
    "mood",
    "atmosphere",
    "lora",
    "locon",
    "a",
    "an",
    "the",
    "of",
    "and",
    "in",
    "on",
    "with",
    "for",
    "by",
];

/// Broad classes that names put after the word for the thing ("Corgi Dog", "Koi Fish"): the
/// thing is a kind of the class. Clothing, tools and parts are left out on purpose: a "Wizard
/// Hat" is not a kind of wizard.
const CLASS_NOUNS: &[&str] = &[
    "dog",
    "cat",
    "bird",
    "fish",
    "animal",
    "creature",
    "monster",
    "beast",
    "flower",
    "plant",
    "tree",
    "car",
    "vehicle",
    "bike",
    "ship",
    "boat",
    "plane",
    "robot",
    "girl",
    "boy",
    "man",
    "woman",
    "person",
    "building",
    "house",
    "city",
    "landscape",
];

/// Praise and kind words in style names that a prompt need not repeat ("Better Watercolor").
const STYLE_FILLERS: &[&str] = &[
    "better",
    "best",
    "beautiful",
    "cute",
    "detailed",
    "perfect",
    "new",
    "super",
    "ultra",
    "hd",
    "realistic",
    "anime",
    "lora",
    "v",
    "my",
];

/// Words after which an adapter name goes on about something other than its thing.
const LINKING_WORDS: &[&str] = &[
    "are", "is", "was", "were", "for", "with", "of", "to", "from", "at", "under", "over",
];

/// The least length of a name said with its words run together
/// ([`CandidateTerms::name_said_run_together`]).
const RUN_TOGETHER_MIN: usize = 6;

/// Words never matched (they would match half of the catalog).
const TOPIC_STOPWORDS: &[&str] = &["lora", "the", "a", "an", "of", "and", "with", "in", "on"];

/// What a candidate is about: the stemmed words of its title and trigger words and of its
/// one-word tags, and its multi-word tags as phrases.
struct CandidateTerms {
    terms: HashSet<String>,
    /// A multi-word tag ("big cat") speaks for its words only when the topic has all of them:
    /// a lion tagged "big cat" is no match for "a cat".
    phrases: Vec<Vec<String>>,
    /// The name in the title ([`people::title_name`]), lower case.
    name: Vec<String>,
    /// The word the name calls the adapter's thing by ("horse" in "Riding a Horse"), as written
    /// and stemmed. None when the name has no such word in ASCII letters (a name in another
    /// script, or only generic words): nothing is then known about its subject.
    subject_word: Option<String>,
    subject: Option<String>,
    /// When the subject is a broad class ("dog" in "Corgi Dog"), the word before it, stemmed.
    qualifier: Option<String>,
}

impl CandidateTerms {
    fn new(doc: &AdapterDoc) -> Self {
        let card = &doc.card;
        let mut terms: HashSet<String> = words(&card.title).map(|w| stem(&w)).collect();
        for text in &card.trigger_words {
            terms.extend(words(text).map(|w| stem(&w)));
        }
        let mut phrases = Vec::new();
        for tag in &card.tags {
            let tag_words: Vec<String> = words(tag).map(|w| stem(&w)).collect();
            match tag_words.len() {
                0 => {}
                1 => terms.extend(tag_words),
                _ => phrases.push(tag_words),
            }
        }
        terms.insert(doc.category.as_str().to_string());
        let name = people::title_name(&card.title);
        let is_generic = |w: &str| GENERIC_SUBJECTS.contains(&w) || GENERIC_HEADS.contains(&w);
        // The head noun comes before a linking word: "These Boots Are Made For Walking" shows
        // boots, "Girl with Umbrella" a girl. Unless only generic words precede it ("Style of").
        let head_part = name
            .iter()
            .position(|w| LINKING_WORDS.contains(&w.as_str()))
            .filter(|&cut| name[..cut].iter().any(|w| !is_generic(w)))
            .unwrap_or(name.len());
        let at = name[..head_part].iter().rposition(|w| !is_generic(w));
        let subject_word = at
            .map(|i| name[i].clone())
            .filter(|w| w.chars().all(|c| c.is_ascii_alphabetic()) && w.len() > 1);
        let subject = subject_word.as_deref().map(stem);
        // "Corgi Dog": a broad class word right after the word that names the thing.
        let qualifier = at
            .filter(|&i| i > 0 && CLASS_NOUNS.contains(&stem(&name[i]).as_str()))
            .map(|i| stem(&name[i - 1]))
            .filter(|w| !is_generic(w));
        Self {
            terms,
            phrases,
            name,
            subject_word,
            subject,
            qualifier,
        }
    }

    /// Share of the name's words (stemmed) that the prompt has.
    fn name_coverage(&self, prompt_stems: &HashSet<String>) -> f32 {
        if self.name.is_empty() {
            return 0.0;
        }
        let found = self
            .name
            .iter()
            .filter(|w| prompt_stems.contains(&stem(w)))
            .count();
        found as f32 / self.name.len() as f32
    }

    /// True when the prompt (its lower-cased words) says the whole name with its words run
    /// together or apart differently: "FairyTaleAI" (name "fairy taleai"), "modernlogo" for
    /// "Modern Logo", "soul card" for "soulcard". Made-up trigger tokens and names are spelled
    /// this way in prompts; a run of at least [`RUN_TOGETHER_MIN`] letters rarely matches by
    /// accident. (The name's own spelling counts too: its coverage is then whole anyway.)
    fn name_said_run_together(&self, prompt_words: &[String]) -> bool {
        let compact: String = self.name.concat();
        if compact.chars().count() < RUN_TOGETHER_MIN {
            return false;
        }
        (0..prompt_words.len()).any(|start| {
            if !compact.starts_with(prompt_words[start].as_str()) {
                return false;
            }
            let mut run = String::new();
            for word in &prompt_words[start..] {
                run.push_str(word);
                if run.len() >= compact.len() {
                    return run == compact;
                }
            }
            false
        })
    }

    /// True when `word` of a topic with `topic_words` is matched.
    fn matches(&self, word: &str, topic_words: &[String]) -> bool {
        self.terms.contains(word)
            || self.phrases.iter().any(|phrase| {
                phrase.iter().any(|w| w == word) && phrase.iter().all(|w| topic_words.contains(w))
            })
    }
}

/// Lower-cased words (letter/digit runs; `_` and `-` split words, as tags use both).
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .map(|w| w.trim_matches('\'').trim_end_matches("'s"))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// A light plural stemmer, applied to both sides, so "cats" meets "cat" and "foxes" meets "fox".
pub(crate) fn stem(word: &str) -> String {
    let w = word.to_lowercase();
    let n = w.len();
    if n > 4 && w.ends_with("ies") {
        return format!("{}y", &w[..n - 3]);
    }
    if n > 4 && w.ends_with("ves") && !w.ends_with("eves") {
        return format!("{}f", &w[..n - 3]);
    }
    for suffix in ["sses", "xes", "ches", "shes", "zes"] {
        if n > suffix.len() + 1 && w.ends_with(suffix) {
            return w[..n - 2].to_string();
        }
    }
    if n > 3 && w.ends_with('s') && !w.ends_with("ss") && !w.ends_with("us") && !w.ends_with("is") {
        return w[..n - 1].to_string();
    }
    w
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use stylus_core::{AdapterCard, AdapterId};

    use super::*;

    /// The paper's rules (up to 3 adapters per topic) without the composition-wide cap, so that
    /// each test sees the rule it is about (the budget has its own tests).
    fn rules() -> ComposerConfig {
        ComposerConfig {
            max_adapters_per_topic: 3,
            max_adapters: usize::MAX,
            ..ComposerConfig::default()
        }
    }

    fn candidate(id: u64, title: &str, tags: &[&str], category: Category) -> Candidate {
        let mut card = AdapterCard::new(AdapterId::Civitai(id), title, "LORA");
        card.tags = tags.iter().map(|t| t.to_string()).collect();
        Candidate {
            doc: Arc::new(AdapterDoc {
                card,
                description: String::new(),
                recommended_weight: 0.8,
                category,
                embedding_text: String::new(),
                refiner: "test".into(),
            }),
            score: 0.5,
        }
    }

    fn with_triggers(mut candidate: Candidate, triggers: &[&str]) -> Candidate {
        Arc::make_mut(&mut candidate.doc).card.trigger_words =
            triggers.iter().map(|t| t.to_string()).collect();
        candidate
    }

    fn compose(prompt: &str, candidates: &[Candidate]) -> Vec<(String, Vec<u64>)> {
        compose_with(rules(), prompt, candidates)
    }

    /// A test card's Civitai id (0 for a local file).
    fn civitai_id(doc: &AdapterDoc) -> u64 {
        doc.card.id.civitai().unwrap_or(0)
    }

    /// The Civitai ids of candidates, in order.
    fn ids(candidates: Vec<Candidate>) -> Vec<u64> {
        candidates.iter().map(|c| civitai_id(&c.doc)).collect()
    }

    fn compose_with(
        config: ComposerConfig,
        prompt: &str,
        candidates: &[Candidate],
    ) -> Vec<(String, Vec<u64>)> {
        // The rules alone: the relevance model has its own tests.
        LocalComposer::new(config)
            .with_min_relevance(f32::NEG_INFINITY, f32::NEG_INFINITY)
            .compose_now(prompt, candidates)
            .topics
            .into_iter()
            .map(|t| {
                let ids = t.adapters.iter().map(|d| civitai_id(d)).collect();
                (t.topic.text, ids)
            })
            .collect()
    }

    #[test]
    fn assigns_each_candidate_to_the_topic_it_matches_and_lists_every_topic() {
        let candidates = [
            candidate(1, "Cyberpunk City", &["city", "neon"], Category::Background),
            candidate(2, "Fluffy Cats", &["cat", "animal"], Category::Animal),
            candidate(3, "Rainy Day", &["rain", "weather"], Category::Background),
            candidate(4, "Horse Riding Pose", &["riding", "pose"], Category::Pose),
        ];
        let got = compose("a man riding a cat in the rain", &candidates);
        assert_eq!(
            got,
            [
                ("man".to_string(), vec![]),
                ("riding".to_string(), vec![4]),
                ("cat".to_string(), vec![2]),
                ("rain".to_string(), vec![3]),
            ]
        );
    }

    #[test]
    fn weak_matches_are_rejected() {
        let candidates = [
            // Only a modifier of "red dress" matches: a different thing.
            candidate(1, "Red Sports Car", &["car", "red"], Category::Vehicle),
            candidate(2, "Moonlit Forest", &["forest"], Category::Background),
        ];
        let got = compose("a woman in a red dress", &candidates);
        assert!(got.iter().all(|(_, ids)| ids.is_empty()), "{got:?}");
    }

    #[test]
    fn broader_matches_give_way_to_exact_ones_and_tag_phrases_stay_whole() {
        let candidates = [
            candidate(1, "Cowboy Hat", &["hat", "cowboy hat"], Category::Clothing),
            candidate(2, "Wizard Hat", &["hat", "wizard hat"], Category::Clothing),
            candidate(3, "Lion", &["lion", "big cat"], Category::Animal),
        ];
        let got = compose("a cat in a cowboy hat", &candidates);
        assert_eq!(
            got,
            [
                ("cat".to_string(), vec![]),
                ("cowboy hat".to_string(), vec![1])
            ]
        );
        // Alone, the broader hat is a fit for the plain head.
        let got = compose("a hat", &candidates[1..]);
        assert_eq!(got, [("hat".to_string(), vec![2])]);
        // The tag phrase "big cat" matches the topic "big cat", but a lion is narrower than that:
        // its name's subject is not in the prompt.
        let got = compose("a big cat", &candidates);
        assert_eq!(got, [("big cat".to_string(), vec![])]);
        let got = compose("a lion", &candidates);
        assert_eq!(got, [("lion".to_string(), vec![3])]);
    }

    #[test]
    fn at_most_k_adapters_per_topic_in_retrieval_order() {
        // Equal matches: the retriever's (reranked) order decides, not its raw score.
        let candidates: Vec<Candidate> = (1..=5)
            .map(|i| {
                let mut c = candidate(i, &format!("Cat {i}"), &["cat"], Category::Animal);
                c.score = i as f32 / 10.0;
                c
            })
            .collect();
        let got = compose("a cat", &candidates);
        assert_eq!(got, [("cat".to_string(), vec![1, 2, 3])]);
        let config = ComposerConfig {
            max_adapters_per_topic: 1,
            ..rules()
        };
        assert_eq!(
            compose_with(config, "a cat", &candidates),
            [("cat".to_string(), vec![1])]
        );
    }

    #[test]
    fn each_adapter_is_used_once_even_when_listed_twice() {
        let cat = candidate(7, "Cats", &["cat"], Category::Animal);
        let candidates = [cat.clone(), cat];
        let got = compose("a black cat next to a white cat", &candidates);
        let all: Vec<u64> = got.iter().flat_map(|(_, ids)| ids.clone()).collect();
        assert_eq!(all, [7], "{got:?}");
    }

    #[test]
    fn characters_only_when_the_prompt_asks_for_one() {
        let candidates = [candidate(
            9,
            "Aria Vexley | original character",
            &["girl", "character", "singer"],
            Category::Character,
        )];
        let plain = compose("a girl singing on a stage", &candidates);
        assert!(plain.iter().all(|(_, ids)| ids.is_empty()), "{plain:?}");

        let named = compose("Aria Vexley singing on a stage", &candidates);
        assert!(named.iter().any(|(_, ids)| ids == &[9]), "{named:?}");

        let asked = compose("a girl singing, anime character", &candidates);
        assert!(asked.iter().any(|(_, ids)| ids == &[9]), "{asked:?}");

        let unblocked = ComposerConfig {
            block_characters: false,
            ..rules()
        };
        let got = compose_with(unblocked, "a girl singing on a stage", &candidates);
        assert!(got.iter().any(|(_, ids)| ids == &[9]), "{got:?}");

        // Civitai's "person of interest" flag counts too, whatever the category says.
        let mut poi = candidate(10, "Some Actor", &["man"], Category::Concept);
        Arc::make_mut(&mut poi.doc).card.poi = true;
        let got = compose("a man", &[poi]);
        assert!(got.iter().all(|(_, ids)| ids.is_empty()), "{got:?}");
    }

    #[test]
    fn at_most_two_style_adapters() {
        let candidates: Vec<Candidate> = (1..=4)
            .map(|i| {
                candidate(
                    i,
                    &format!("Watercolor Painting {i}"),
                    &["watercolor", "painting", "sketch"],
                    Category::Style,
                )
            })
            .collect();
        let got = compose("a watercolor painting of a fox, pencil sketch", &candidates);
        let styles: usize = got.iter().map(|(_, ids)| ids.len()).sum();
        assert_eq!(styles, 2, "{got:?}");
        let three = ComposerConfig {
            max_style_adapters: 3,
            ..rules()
        };
        let got = compose_with(
            three,
            "a watercolor painting of a fox, pencil sketch",
            &candidates,
        );
        assert_eq!(
            got.iter().map(|(_, ids)| ids.len()).sum::<usize>(),
            3,
            "{got:?}"
        );
    }

    #[test]
    fn is_deterministic_and_stems_plurals() {
        let candidates = [candidate(3, "Fox", &["foxes"], Category::Animal)];
        let a = compose("three foxes in the snow", &candidates);
        assert_eq!(a, compose("three foxes in the snow", &candidates));
        assert_eq!(a[0], ("foxes".to_string(), vec![3]));
        assert_eq!(stem("puppies"), "puppy");
        assert_eq!(stem("glasses"), "glass");
        assert_eq!(stem("bus"), "bus");
    }

    #[test]
    fn narrower_or_neighbouring_adapters_are_rejected() {
        let candidates = [
            candidate(1, "Riding a Horse", &["riding", "horse"], Category::Action),
            candidate(2, "Umbrella", &["umbrella", "rain"], Category::Object),
            candidate(
                3,
                "Rainy City Street",
                &["rain", "street"],
                Category::Background,
            ),
            candidate(4, "Corgi", &["dog", "corgi"], Category::Animal),
            candidate(5, "Rain Effect", &["rain", "weather"], Category::Concept),
        ];
        let got = compose("a man riding a cat in the rain", &candidates);
        assert_eq!(
            got,
            [
                ("man".to_string(), vec![]),
                ("riding".to_string(), vec![]),
                ("cat".to_string(), vec![]),
                ("rain".to_string(), vec![5]),
            ]
        );
        // A compound of the subject counts: sunglasses are glasses.
        let glasses = [candidate(
            7,
            "Glasses LoRA",
            &["sunglasses", "glasses"],
            Category::Clothing,
        )];
        assert_eq!(
            compose("a man wearing sunglasses", &glasses)
                .iter()
                .flat_map(|(_, ids)| ids.clone())
                .collect::<Vec<_>>(),
            [7]
        );
        // A wizard hat is no wizard: "hat" is not a class the wizard belongs to.
        let hat = [candidate(
            6,
            "Wizard Hat",
            &["wizard", "hat"],
            Category::Clothing,
        )];
        assert_eq!(
            compose("an old wizard", &hat),
            [("old wizard".to_string(), vec![])]
        );
        // A corgi adapter is narrower than "a dog", and fine for "a corgi".
        assert_eq!(compose("a dog", &candidates), [("dog".to_string(), vec![])]);
        assert_eq!(
            compose("a corgi", &candidates),
            [("corgi".to_string(), vec![4])]
        );
    }

    /// An embedder with a fixed vector per known word (the texts' words summed, normalized):
    /// "kitten" sits next to "cat", everything else is orthogonal.
    struct TableEmbedder {
        calls: std::sync::atomic::AtomicUsize,
        short_reply: bool,
    }

    #[async_trait]
    impl Embedder for TableEmbedder {
        fn id(&self) -> String {
            "table".into()
        }
        fn dim(&self) -> usize {
            4
        }
        async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let n = if self.short_reply {
                texts.len() - 1
            } else {
                texts.len()
            };
            Ok(texts[..n]
                .iter()
                .map(|t| {
                    let mut v = [0f32; 4];
                    for w in people::lower_words(t) {
                        match w.as_str() {
                            "cat" => v[0] += 1.0,
                            "kitten" => (v[0], v[1]) = (v[0] + 0.9, v[1] + 0.3),
                            "sofa" => v[2] += 1.0,
                            _ => v[3] += 1.0,
                        }
                    }
                    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
                    v.iter().map(|x| x / norm).collect()
                })
                .collect())
        }
    }

    #[tokio::test]
    async fn an_embedder_matches_synonyms_and_caches_candidate_vectors() {
        let candidates = [candidate(1, "Kitten", &["kitten"], Category::Animal)];
        let words_only = LocalComposer::new(rules());
        let got = words_only
            .compose("a cat on a sofa", &candidates)
            .await
            .unwrap();
        assert!(got.topics.iter().all(|t| t.adapters.is_empty()), "{got:?}");

        let embedder = Arc::new(TableEmbedder {
            calls: 0.into(),
            short_reply: false,
        });
        let composer = LocalComposer::new(rules()).with_embedder(embedder.clone());
        let got = composer
            .compose("a cat on a sofa", &candidates)
            .await
            .unwrap();
        let cat = got.topics.iter().find(|t| t.topic.text == "cat").unwrap();
        assert_eq!(cat.adapters.len(), 1, "{got:?}");
        let sofa = got.topics.iter().find(|t| t.topic.text == "sofa").unwrap();
        assert!(sofa.adapters.is_empty(), "{got:?}");
        // Topics and candidates: 2 calls; the second prompt re-embeds only its topics.
        composer.compose("a cat", &candidates).await.unwrap();
        assert_eq!(embedder.calls.load(std::sync::atomic::Ordering::SeqCst), 3);

        let short = LocalComposer::new(rules()).with_embedder(Arc::new(TableEmbedder {
            calls: 0.into(),
            short_reply: true,
        }));
        let err = short.compose("a cat", &candidates).await.unwrap_err();
        assert!(err.to_string().contains("table"), "{err}");
    }

    #[test]
    fn a_style_is_named_whole_and_a_name_shows_its_head_noun() {
        let candidates = [
            candidate(
                1,
                "South Park Style (LORA)",
                &["style", "cartoon"],
                Category::Style,
            ),
            candidate(
                2,
                "Chainsaw Man Anime Style LoRA",
                &["anime"],
                Category::Style,
            ),
            candidate(
                3,
                "Relaxing on Hammock",
                &["style", "beach"],
                Category::Style,
            ),
            candidate(
                4,
                "These Boots Are Made For Walking",
                &["boots"],
                Category::Clothing,
            ),
            candidate(
                5,
                "Better Watercolor Painting",
                &["watercolor"],
                Category::Style,
            ),
            candidate(6, "Park Bench", &["park", "bench"], Category::Object),
        ];
        let got = compose("a man walking his dog in the park, watercolor", &candidates);
        let picked: Vec<u64> = got.iter().flat_map(|(_, ids)| ids.clone()).collect();
        assert_eq!(picked, vec![5], "{got:?}");
        // The whole name unlocks the style; the boots come with boots.
        let got = compose("boots in south park style", &candidates);
        let picked: HashSet<u64> = got.iter().flat_map(|(_, ids)| ids.clone()).collect();
        assert!(picked.contains(&1) && picked.contains(&4), "{got:?}");
        // On a style topic part of the name will do.
        let monet = [candidate(
            7,
            "Claude Monet/Oscar-Claude Monet style",
            &["style"],
            Category::Style,
        )];
        let got = compose("a cat in the style of Monet", &monet);
        assert_eq!(
            got.iter()
                .flat_map(|(_, ids)| ids.clone())
                .collect::<Vec<_>>(),
            [7],
            "{got:?}"
        );
    }

    #[test]
    fn a_name_the_topic_says_is_a_fit_and_a_shared_modifier_is_not() {
        let candidates = [
            candidate(1, "Double V Concept", &["hands"], Category::Concept),
            candidate(2, "(color)PunkPunk", &["colorful"], Category::Style),
        ];
        let got = compose("a punk rock squirrel", &candidates);
        assert_eq!(got, [("punk rock squirrel".to_string(), vec![2])]);
        let got = compose("a red double decker bus", &candidates);
        assert_eq!(got, [("red double decker bus".to_string(), vec![])]);
    }

    #[test]
    fn at_most_max_adapters_in_the_whole_composition() {
        let candidates = [
            candidate(1, "Cat", &["cat"], Category::Animal),
            candidate(2, "Hat", &["hat"], Category::Clothing),
            candidate(3, "Rain", &["rain"], Category::Background),
        ];
        let prompt = "a cat in a hat in the rain";
        let count = |max_adapters| {
            let config = ComposerConfig {
                max_adapters,
                ..ComposerConfig::default()
            };
            compose_with(config, prompt, &candidates)
                .iter()
                .map(|(_, ids)| ids.len())
                .sum::<usize>()
        };
        assert_eq!(count(2), 2);
        assert_eq!(count(3), 3);
    }

    #[test]
    fn the_relevance_model_leaves_weak_fits_out_and_asks_more_of_a_second_adapter() {
        // Both fit a topic under the rules; only the first has the evidence of a wanted adapter
        // (first in the retrieval, its whole name and its tag said by the prompt).
        let mut candidates = vec![candidate(1, "Corgi", &["corgi"], Category::Animal)];
        for id in 2..40 {
            candidates.push(candidate(
                id,
                &format!("Filler {id}"),
                &[],
                Category::Concept,
            ));
        }
        candidates.push(candidate(40, "Sunset Glow", &["sky"], Category::Style));
        let composer = LocalComposer::new(ComposerConfig::default());
        let picked = |c: &LocalComposer, prompt: &str, candidates: &[Candidate]| -> Vec<String> {
            c.compose_now(prompt, candidates)
                .topics
                .into_iter()
                .flat_map(|t| t.adapters)
                .map(|d| d.card.title.clone())
                .collect()
        };
        assert_eq!(
            picked(&composer, "a corgi under a sunset glow sky", &candidates),
            ["Corgi"]
        );
        // Without the thresholds the rules take the weak fit too.
        let rules_only = composer
            .clone()
            .with_min_relevance(f32::NEG_INFINITY, f32::NEG_INFINITY);
        assert_eq!(
            picked(&rules_only, "a corgi under a sunset glow sky", &candidates),
            ["Corgi", "Sunset Glow"]
        );
        // The same weak fit alone is below even the first adapter's threshold.
        assert!(picked(&composer, "a sunset glow sky", &candidates[1..]).is_empty());
    }

    #[test]
    fn rerank_puts_named_adapters_first_and_unasked_people_last() {
        let candidates = vec![
            candidate(1, "Walter White", &["man"], Category::Celebrity),
            candidate(2, "Detailed Eyes", &["eyes"], Category::Concept),
            candidate(3, "Noir Photo", &["photo"], Category::Style),
            candidate(4, "Butterfly", &["insect"], Category::Animal),
        ];
        let composer = LocalComposer::new(rules());
        assert_eq!(
            ids(composer.rerank("a man with a butterfly", candidates.clone())),
            vec![4, 2, 3, 1]
        );
        // Asked for by name: the person keeps their place.
        assert_eq!(
            ids(composer.rerank("walter white", candidates)),
            vec![1, 2, 3, 4]
        );
    }

    #[test]
    fn rerank_keeps_a_tag_list_in_order_and_lifts_a_said_made_up_trigger() {
        let steampunk = with_triggers(
            candidate(1, "SteamPunk AI", &["steampunk"], Category::Style),
            &["SteamPunkAI"],
        );
        let candidates = vec![
            candidate(2, "Coffee Machine", &["coffee"], Category::Object),
            steampunk,
            candidate(3, "Cat", &["cat"], Category::Animal),
        ];
        let composer = LocalComposer::new(rules());
        assert_eq!(
            ids(composer.rerank("SteamPunkAI coffee", candidates.clone())),
            vec![1, 2, 3]
        );
        // A plain word among the triggers is no such evidence.
        assert_eq!(
            ids(composer.rerank("steampunk coffee", candidates.clone())),
            vec![2, 1, 3]
        );
        // A tag list keeps the retriever's order, and searches no topics.
        let tags = "1girl, solo, cat, coffee machine, masterpiece, best quality";
        assert_eq!(ids(composer.rerank(tags, candidates)), vec![2, 1, 3]);
        assert!(composer.topic_queries(tags).is_empty());
    }

    #[test]
    fn rerank_lifts_a_one_word_trigger_no_other_candidate_uses() {
        let candidates = vec![
            candidate(1, "Industrial Machines", &["machine"], Category::Object),
            with_triggers(
                candidate(2, "GrecoRomaPunk", &["style"], Category::Style),
                &["grecopunkai", "romapunkai"],
            ),
            with_triggers(
                candidate(3, "Soft Paint", &["style"], Category::Style),
                &["watercolor"],
            ),
            candidate(4, "Wet Look", &["watercolor"], Category::Style),
            with_triggers(
                candidate(5, "Deborah Ann Woll", &["woman"], Category::Celebrity),
                &["debannwoll"],
            ),
        ];
        let composer = LocalComposer::new(rules());
        let first = |prompt: &str| ids(composer.rerank(prompt, candidates.clone()))[0];
        assert_eq!(first("romapunkai coffee machine"), 2);
        // A word other candidates use too is a plain word, whoever lists it as a trigger.
        assert_eq!(first("watercolor coffee machine"), 1);
        // A person's own trigger lifts them over the penalty for people nobody asked for.
        assert_eq!(first("a candid photo of debannwoll"), 5);
        let reranked = ids(composer.rerank("a candid photo of a woman", candidates.clone()));
        assert_eq!(reranked.last(), Some(&5));
        // Only words of a short trigger count: those of a longer one are plain words.
        let long = with_triggers(
            candidate(6, "Hyoon", &["streamer"], Category::Celebrity),
            &["asian woman with wavy long hair"],
        );
        let mut with_long = candidates.clone();
        with_long.insert(0, long);
        let reranked = ids(composer.rerank("a woman with long hair", with_long));
        assert!(!reranked[..4].contains(&6), "{reranked:?}");
    }

    #[test]
    fn rerank_counts_a_name_said_with_its_words_run_together() {
        let candidates = vec![
            candidate(1, "Industrial Machines", &["machine"], Category::Object),
            candidate(2, "FairyTaleAI", &["fairy tale"], Category::Style),
            candidate(3, "Modern Logo", &["logo"], Category::Style),
            candidate(4, "Cat", &["cat"], Category::Animal),
        ];
        let composer = LocalComposer::new(rules());
        // "FairyTaleAI" is the whole name "Fairy TaleAI" run together.
        assert_eq!(
            ids(composer.rerank("FairyTaleAI coffee machine", candidates.clone()))[0],
            2
        );
        assert_eq!(
            ids(composer.rerank("modernlogo blue text", candidates.clone()))[0],
            3
        );
        // Half a name run together with another word is not the name.
        assert_eq!(
            ids(composer.rerank("modernart machine", candidates.clone()))[0],
            1
        );
        // Short runs are left alone ("cat" + "s" is no spelling of a name).
        let short = vec![
            candidate(5, "Dog", &["dog"], Category::Animal),
            candidate(6, "Ca T", &[], Category::Concept),
        ];
        assert_eq!(ids(composer.rerank("a cat with a dog", short)), vec![5, 6]);
    }
}
