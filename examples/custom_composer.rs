//! An application plugs its own `Composer` into `Stylus`.
//!
//! `CommaComposer` treats every comma-separated part of the prompt as one topic and gives it the
//! best-retrieved candidate whose title shares a word with it (at most one adapter per topic,
//! each adapter once). Everything else (embedding, retrieval, masks, weights, A1111 prompts) is
//! the stock pipeline on the bundled catalog.
//!
//! ```text
//! cargo run --example custom_composer -- "a red fox, snowy mountains, ukiyo-e woodblock print"
//! ```

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use stylus_core::{Candidate, Composer, Composition, Result, Topic, TopicAdapters};

/// One topic per comma-separated part; the first candidate (best retrieved) whose title shares a
/// word with the part.
#[derive(Debug)]
struct CommaComposer;

#[async_trait]
impl Composer for CommaComposer {
    async fn compose(&self, prompt: &str, candidates: &[Candidate]) -> Result<Composition> {
        let mut used = HashSet::new();
        let topics = prompt
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| {
                let part_words = words(part);
                let pick = candidates.iter().find(|c| {
                    !used.contains(c.doc.id())
                        && words(&c.doc.card.title)
                            .iter()
                            .any(|w| part_words.contains(w))
                });
                let adapters = pick.map(|c| c.doc.clone()).into_iter().collect::<Vec<_>>();
                used.extend(adapters.iter().map(|d| d.id().clone()));
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

fn words(text: &str) -> HashSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 2)
        .map(str::to_lowercase)
        .collect()
}

#[tokio::main]
async fn main() -> Result<()> {
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "a red fox, snowy mountains, ukiyo-e woodblock print".to_string());

    // The bundled catalog with its embedder and retriever, as `stylus select` opens it; only
    // the composer is ours. The mask strategy is the config's.
    let stylus = stylus::Stylus::options()
        .custom_composer(Arc::new(CommaComposer))
        .open(stylus::Source::Bundled, &stylus::StylusConfig::default())?;

    let plan = stylus.select(&prompt).await?;
    for topic in &plan.topics {
        let titles: Vec<&str> = topic.adapters.iter().map(|a| a.title.as_str()).collect();
        println!("{:<28} {}", topic.text, titles.join(", "));
    }
    println!("{}", plan.a1111_prompt);
    Ok(())
}
