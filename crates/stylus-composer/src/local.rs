//! `LocalComposer`: an offline, deterministic composer.
//!
//! It cuts the prompt into topics with [`crate::segment`], scores every (topic, candidate) pair by
//! how much of the topic the candidate's title, tags and trigger words cover, and assigns
//! candidates greedily, best pair first, under the paper's rules:
//! - a pair is considered only when its score reaches [`LocalComposer::min_score`] and comes
//!   close to the best pair of its topic (an adapter broader than the topic, matching only its
//!   head word, does not ride along with an exact match);
//! - at most `max_adapters_per_topic` adapters per topic, each adapter at most once overall (so an
//!   adapter lands on the topic it matches best);
//! - characters and celebrities only when the prompt asks for one: it names the character (all
//!   words of the card's name appear in the prompt) or says "character"/"celebrity";
//! - at most `max_style_adapters` style adapters in the whole composition.
//!
//! Descriptions are not matched on purpose: they mention many things an adapter is not about.

use std::collections::HashSet;

use async_trait::async_trait;
use stylus_core::{
    AdapterDoc, Candidate, Category, Composer, ComposerConfig, Composition, Result, Topic,
    TopicAdapters,
};

use crate::segment::{Segment, SegmentKind, segment};

/// The default [`LocalComposer::min_score`]: the topic's head word (or most of a topic whose
/// head is generic, like "painting") must be matched.
pub const DEFAULT_MIN_SCORE: f32 = 0.55;

/// Share of a topic's match carried by its head word (the last word).
const HEAD_WEIGHT: f32 = 0.6;
/// The same for generic heads ("oil painting": the "oil" matters more than the "painting").
const GENERIC_HEAD_WEIGHT: f32 = 0.2;
/// Bonus when the candidate's category fits the kind of topic (a style adapter for a style topic).
const CATEGORY_BONUS: f32 = 0.1;
/// A candidate must score within this of the best candidate of its topic: once "cowboy hat" has
/// a cowboy-hat adapter, a wizard hat (only the head word matches) is not another fit.
const TOPIC_MARGIN: f32 = 0.25;
/// Weight of the retriever's similarity, which only breaks near-ties between equal matches.
const RETRIEVAL_WEIGHT: f32 = 0.05;

/// The offline composer (see the module docs for its rules).
#[derive(Debug, Clone)]
pub struct LocalComposer {
    config: ComposerConfig,
    min_score: f32,
}

impl LocalComposer {
    pub fn new(config: ComposerConfig) -> Self {
        Self {
            config,
            min_score: DEFAULT_MIN_SCORE,
        }
    }

    /// Sets the least score a (topic, candidate) pair needs (0..1.2; default
    /// [`DEFAULT_MIN_SCORE`]).
    pub fn with_min_score(mut self, min_score: f32) -> Self {
        self.min_score = min_score;
        self
    }

    pub fn min_score(&self) -> f32 {
        self.min_score
    }

    /// The composition, computed synchronously (what [`Composer::compose`] returns).
    pub fn compose_now(&self, prompt: &str, candidates: &[Candidate]) -> Composition {
        let segments = segment(prompt);
        let topics: Vec<TopicTerms> = segments.iter().map(TopicTerms::new).collect();
        let prompt_words: HashSet<String> = words(prompt).map(|w| stem(&w)).collect();
        let asks_for_person = PERSON_WORDS.iter().any(|w| prompt_words.contains(&stem(w)));

        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (c, candidate) in candidates.iter().enumerate() {
            let doc = &candidate.doc;
            if self.config.block_characters
                && is_person(doc)
                && !asks_for_person
                && !names_in_prompt(doc, &prompt_words)
            {
                continue;
            }
            let terms = CandidateTerms::new(doc);
            for (t, topic) in topics.iter().enumerate() {
                let score = topic.match_score(&terms);
                if score <= 0.0 {
                    continue;
                }
                let score = score
                    + category_bonus(topic.kind, doc.category)
                    + RETRIEVAL_WEIGHT * candidate.score.clamp(0.0, 1.0);
                if score >= self.min_score {
                    pairs.push((score, t, c));
                }
            }
        }
        // Best pair first; ties in prompt order, then retrieval order (deterministic).
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));

        let mut best = vec![f32::NEG_INFINITY; segments.len()];
        for &(score, t, _) in &pairs {
            best[t] = best[t].max(score);
        }
        let mut assigned: Vec<Vec<usize>> = vec![Vec::new(); segments.len()];
        let mut used = vec![false; candidates.len()];
        let mut styles = 0;
        for (score, t, c) in pairs {
            let doc = &candidates[c].doc;
            if score < best[t] - TOPIC_MARGIN {
                continue;
            }
            let is_style = doc.category == Category::Style;
            if used[c]
                || assigned[t].len() >= self.config.max_adapters_per_topic
                || (is_style && styles >= self.config.max_style_adapters)
                || assigned
                    .iter()
                    .flatten()
                    .any(|&o| candidates[o].doc.id() == doc.id())
            {
                continue;
            }
            used[c] = true;
            styles += usize::from(is_style);
            assigned[t].push(c);
        }

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
}

#[async_trait]
impl Composer for LocalComposer {
    async fn compose(&self, prompt: &str, candidates: &[Candidate]) -> Result<Composition> {
        Ok(self.compose_now(prompt, candidates))
    }
}

/// Words a prompt uses to ask for a character or a real person.
const PERSON_WORDS: &[&str] = &["character", "celebrity", "cosplay", "cosplayer", "celeb"];

/// Characters, celebrities and Civitai's "person of interest" cards.
fn is_person(doc: &AdapterDoc) -> bool {
    doc.category.is_person() || doc.card.poi
}

/// True when every distinctive word of the card's name appears in the prompt.
fn names_in_prompt(doc: &AdapterDoc, prompt_words: &HashSet<String>) -> bool {
    let name = doc
        .card
        .title
        .split(['|', '(', '[', ':', '/', ',', '-'])
        .next()
        .unwrap_or("");
    let name_words: Vec<String> = words(name)
        .filter(|w| !NAME_FILLER.contains(&w.as_str()) && !w.chars().any(|c| c.is_ascii_digit()))
        .map(|w| stem(&w))
        .collect();
    !name_words.is_empty() && name_words.iter().all(|w| prompt_words.contains(w))
}

/// Words in adapter titles that are not part of a name.
const NAME_FILLER: &[&str] = &[
    "lora",
    "locon",
    "lycoris",
    "character",
    "celebrity",
    "style",
    "model",
    "the",
    "a",
    "of",
    "and",
    "v",
    "ver",
    "version",
    "sd",
    "sd15",
    "xl",
    "by",
    "in",
    "for",
    "outfit",
    "costume",
];

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
    "render",
    "design",
    "picture",
    "image",
    "effect",
    "look",
];

/// Words never matched (they would match half of the catalog).
const TOPIC_STOPWORDS: &[&str] = &["lora", "the", "a", "an", "of", "and", "with", "in", "on"];

/// What a candidate is about: the stemmed words of its title and trigger words and of its
/// one-word tags, and its multi-word tags as phrases.
struct CandidateTerms {
    terms: HashSet<String>,
    /// A multi-word tag ("big cat") speaks for its words only when the topic has all of them:
    /// a lion tagged "big cat" is no match for "a cat".
    phrases: Vec<Vec<String>>,
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
        Self { terms, phrases }
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

    fn compose(prompt: &str, candidates: &[Candidate]) -> Vec<(String, Vec<u64>)> {
        compose_with(ComposerConfig::default(), prompt, candidates)
    }

    fn compose_with(
        config: ComposerConfig,
        prompt: &str,
        candidates: &[Candidate],
    ) -> Vec<(String, Vec<u64>)> {
        LocalComposer::new(config)
            .compose_now(prompt, candidates)
            .topics
            .into_iter()
            .map(|t| {
                let ids = t
                    .adapters
                    .iter()
                    .map(|d| match d.card.id {
                        AdapterId::Civitai(id) => id,
                        AdapterId::Local(_) => 0,
                    })
                    .collect();
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
        let got = compose("a big cat", &candidates);
        assert_eq!(got, [("big cat".to_string(), vec![3])]);
    }

    #[test]
    fn at_most_k_adapters_per_topic_best_first() {
        let candidates: Vec<Candidate> = (1..=5)
            .map(|i| {
                let mut c = candidate(i, &format!("Cat {i}"), &["cat"], Category::Animal);
                c.score = i as f32 / 10.0;
                c
            })
            .collect();
        let got = compose("a cat", &candidates);
        assert_eq!(got, [("cat".to_string(), vec![5, 4, 3])]);
        let config = ComposerConfig {
            max_adapters_per_topic: 1,
            ..ComposerConfig::default()
        };
        assert_eq!(
            compose_with(config, "a cat", &candidates),
            [("cat".to_string(), vec![5])]
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
            ..ComposerConfig::default()
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
            ..ComposerConfig::default()
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
}
