//! The selection plan (what `stylus select --json` prints) and the A1111 prompt builder.

use serde::{Deserialize, Serialize};

use crate::{Composition, Mask, WeightPolicy, WeightedAdapter};

/// One topic of the plan with its adapters weighted as if all of them were on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanTopic {
    /// The topic as it appears in the prompt.
    pub text: String,
    pub adapters: Vec<WeightedAdapter>,
}

/// One mask of the plan: which adapters are on, their weights and the prompt to render it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanMask {
    /// `active[topic][adapter]`, aligned with `topics`.
    pub active: Vec<Vec<bool>>,
    pub adapters: Vec<WeightedAdapter>,
    pub a1111_prompt: String,
}

/// Where the time of one `select` went, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub embed: f64,
    pub retrieve: f64,
    pub compose: f64,
}

/// The result of `Stylus::select`: topics, adapters, weights, masks and A1111 prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectionPlan {
    pub prompt: String,
    /// Every topic in prompt order, those without adapters included.
    pub topics: Vec<PlanTopic>,
    pub masks: Vec<PlanMask>,
    /// The prompt with every chosen adapter on.
    pub a1111_prompt: String,
    /// How many candidates the retriever handed to the composer.
    pub candidates: usize,
    pub timings_ms: Timings,
}

/// Builds A1111-style prompts: the lower-cased prompt, the debias string, and one
/// `<lora:alias:weight>` per active adapter. Trigger words are not added (as in the paper).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PromptBuilder {
    /// Appended after the prompt (the paper's `realistic, best quality`); empty for none.
    pub debias: String,
    /// Wrap topics that got no active adapter in `(topic:emphasis)`; `None` turns it off.
    pub emphasize_uncovered: Option<f32>,
}

impl Default for PromptBuilder {
    fn default() -> Self {
        Self {
            debias: "realistic, best quality".to_string(),
            emphasize_uncovered: None,
        }
    }
}

impl PromptBuilder {
    /// The text part (no `<lora:>` tags) for `mask`: lower-cased, uncovered topics emphasized when
    /// configured, debias string appended.
    pub fn text(&self, prompt: &str, composition: &Composition, mask: &Mask) -> String {
        let mut text = prompt.trim().to_lowercase();
        if let Some(emphasis) = self.emphasize_uncovered {
            for (t, topic) in composition.topics.iter().enumerate() {
                let needle = topic.topic.text.trim().to_lowercase();
                if mask.active_in_topic(t) > 0 || needle.is_empty() {
                    continue;
                }
                if let Some(pos) = find_unemphasized(&text, &needle) {
                    let weight = format_weight(emphasis);
                    text.replace_range(pos..pos + needle.len(), &format!("({needle}:{weight})"));
                }
            }
        }
        if !self.debias.trim().is_empty() {
            text = format!("{text}, {}", self.debias.trim());
        }
        text
    }

    /// The full A1111 prompt for `adapters` (already weighted for `mask`).
    pub fn a1111(
        &self,
        prompt: &str,
        composition: &Composition,
        mask: &Mask,
        adapters: &[WeightedAdapter],
    ) -> String {
        let mut out = self.text(prompt, composition, mask);
        for adapter in adapters {
            out.push_str(&format!(
                " <lora:{}:{}>",
                sanitize_alias(&adapter.alias),
                format_weight(adapter.weight)
            ));
        }
        out
    }

    /// Builds the plan's topics, masks and prompts from a composition.
    pub fn plan(
        &self,
        prompt: &str,
        composition: &Composition,
        masks: &[Mask],
        policy: &WeightPolicy,
    ) -> (Vec<PlanTopic>, Vec<PlanMask>, String) {
        let all = Mask::all(composition);
        let topics = composition
            .topics
            .iter()
            .enumerate()
            .map(|(t, topic)| PlanTopic {
                text: topic.topic.text.clone(),
                adapters: topic
                    .adapters
                    .iter()
                    .map(|doc| {
                        WeightedAdapter::new(
                            doc,
                            policy.weight(doc.recommended_weight, all.active_in_topic(t)),
                        )
                    })
                    .collect(),
            })
            .collect();
        let plan_masks = masks
            .iter()
            .map(|mask| {
                let adapters = policy.weighted(composition, mask);
                PlanMask {
                    active: mask.active.clone(),
                    a1111_prompt: self.a1111(prompt, composition, mask, &adapters),
                    adapters,
                }
            })
            .collect();
        let all_adapters = policy.weighted(composition, &all);
        let full = self.a1111(prompt, composition, &all, &all_adapters);
        (topics, plan_masks, full)
    }
}

/// A weight as A1111 users write it: at most three decimals, no trailing zeros.
pub fn format_weight(w: f32) -> String {
    let s = format!("{w:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// Aliases come from untrusted catalog text: keep characters that cannot break the tag syntax.
fn sanitize_alias(alias: &str) -> String {
    alias
        .chars()
        .map(|c| match c {
            '<' | '>' | ':' | '\n' | '\r' => '_',
            c => c,
        })
        .collect()
}

/// The byte position of `needle` in `text` outside of an existing `( ... )` group. One pass:
/// the parenthesis depth is carried from match to match, not recounted from the start (which was
/// quadratic in a long prompt full of matches inside parentheses).
fn find_unemphasized(text: &str, needle: &str) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    let (mut from, mut counted, mut depth) = (0, 0, 0isize);
    while let Some(rel) = text[from..].find(needle) {
        let pos = from + rel;
        for byte in text[counted..pos].bytes() {
            match byte {
                b'(' => depth += 1,
                b')' => depth -= 1,
                _ => {}
            }
        }
        counted = pos;
        if depth <= 0 {
            return Some(pos);
        }
        from = pos + needle.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::find_unemphasized;

    #[test]
    fn emphasis_search_skips_groups_and_is_linear() {
        assert_eq!(find_unemphasized("(a cat) cat", "cat"), Some(8));
        assert_eq!(find_unemphasized("(a cat (cat)) x", "cat"), None);
        assert_eq!(find_unemphasized("cat)", "cat"), Some(0));
        assert_eq!(find_unemphasized("a) (b) cat", "cat"), Some(7));
        assert_eq!(find_unemphasized("x", ""), None);
        // 50,000 opening parentheses, then 25,000 matches inside them: was minutes, now instant.
        let text = format!("{}{}", "(".repeat(50_000), "cat ".repeat(25_000));
        let start = std::time::Instant::now();
        assert_eq!(find_unemphasized(&text, "cat"), None);
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }
}
