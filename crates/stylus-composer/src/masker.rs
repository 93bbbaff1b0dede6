//! Mask strategies (the paper's `masking.py`): which adapters of a composition are on in each
//! image of a batch.
//!
//! - `all`: one mask, every adapter on.
//! - `one_hot_loras`: every subset of each topic's adapters (the empty subset included), crossed
//!   over topics. With the paper's cap of 3 adapters per topic that is up to 8 choices per topic.
//! - `one_hot_concepts`: whole topics on or off, crossed over the topics that have adapters.
//!
//! Both crossed strategies grow exponentially with the number of topics. When the full product
//! exceeds [`MAX_ENUMERATED_MASKS`] the masker does not enumerate it: it draws that many distinct
//! masks uniformly at random (every topic's choice drawn independently) with a seed derived from
//! the composition's shape, so the list stays deterministic for a given composition. The first
//! mask is always the "everything on" mask, so the full selection is never sampled away.

use std::collections::HashSet;

use stylus_core::rng::SplitMix64;
use stylus_core::{Composition, Mask, MaskStrategy, Masker};

/// The most masks a crossed strategy enumerates; beyond it, masks are sampled (see module docs).
pub const MAX_ENUMERATED_MASKS: usize = 4096;

/// A [`Masker`] for one of the paper's strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrategyMasker {
    strategy: MaskStrategy,
    max_masks: usize,
}

impl StrategyMasker {
    /// A masker for `strategy` with the default cap ([`MAX_ENUMERATED_MASKS`]).
    pub fn new(strategy: MaskStrategy) -> Self {
        Self {
            strategy,
            max_masks: MAX_ENUMERATED_MASKS,
        }
    }

    /// Sets the enumeration cap (at least 1).
    pub fn with_max_masks(mut self, max_masks: usize) -> Self {
        self.max_masks = max_masks.max(1);
        self
    }

    pub fn strategy(&self) -> MaskStrategy {
        self.strategy
    }
}

impl Masker for StrategyMasker {
    fn masks(&self, composition: &Composition) -> Vec<Mask> {
        let sizes: Vec<usize> = composition
            .topics
            .iter()
            .map(|t| t.adapters.len())
            .collect();
        // Each topic's choices as bit patterns over its adapters, "all on" first.
        let choices: Vec<Vec<u64>> = match self.strategy {
            MaskStrategy::All => sizes.iter().map(|&n| vec![full_bits(n)]).collect(),
            MaskStrategy::OneHotLoras => sizes
                .iter()
                .map(|&n| (0..=full_bits(n)).rev().collect())
                .collect(),
            MaskStrategy::OneHotConcepts => sizes
                .iter()
                .map(|&n| {
                    if n == 0 {
                        vec![0]
                    } else {
                        vec![full_bits(n), 0]
                    }
                })
                .collect(),
        };
        let picks = if product_exceeds(&choices, self.max_masks) {
            sample_picks(&choices, self.max_masks, shape_seed(&sizes))
        } else {
            enumerate_picks(&choices)
        };
        picks
            .into_iter()
            .map(|pick| Mask {
                active: pick
                    .iter()
                    .zip(&sizes)
                    .map(|(&bits, &n)| (0..n).map(|a| bits >> a & 1 == 1).collect())
                    .collect(),
            })
            .collect()
    }
}

/// All `n` adapters on. Topics hold at most a handful of adapters (the composer caps them), and
/// 63 keeps the shift in range for any input.
fn full_bits(n: usize) -> u64 {
    let n = n.min(63);
    (1u64 << n) - 1
}

fn product_exceeds(choices: &[Vec<u64>], cap: usize) -> bool {
    let mut product: usize = 1;
    for c in choices {
        product = product.saturating_mul(c.len());
        if product > cap {
            return true;
        }
    }
    false
}

/// Every combination in mixed-radix order: the first topic varies slowest.
fn enumerate_picks(choices: &[Vec<u64>]) -> Vec<Vec<u64>> {
    let mut out: Vec<Vec<u64>> = vec![Vec::with_capacity(choices.len())];
    for topic_choices in choices {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                topic_choices.iter().map(move |&c| {
                    let mut next = prefix.clone();
                    next.push(c);
                    next
                })
            })
            .collect();
    }
    out
}

/// `count` distinct combinations (the product is known to exceed `count`): "all on" first, then
/// independent uniform draws per topic, duplicates skipped.
fn sample_picks(choices: &[Vec<u64>], count: usize, seed: u64) -> Vec<Vec<u64>> {
    let mut rng = SplitMix64::new(seed);
    let first: Vec<u64> = choices.iter().map(|c| c[0]).collect();
    let mut seen: HashSet<Vec<u64>> = HashSet::with_capacity(count);
    seen.insert(first.clone());
    let mut out = vec![first];
    while out.len() < count {
        let pick: Vec<u64> = choices.iter().map(|c| c[rng.below(c.len())]).collect();
        if seen.insert(pick.clone()) {
            out.push(pick);
        }
    }
    out
}

/// A seed that depends only on how many adapters each topic has.
fn shape_seed(sizes: &[usize]) -> u64 {
    sizes.iter().fold(0x5354_594c_5553_u64, |h, &n| {
        (h ^ n as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use stylus_core::{AdapterCard, AdapterDoc, AdapterId, Category, Topic, TopicAdapters};

    use super::*;

    fn doc(id: u64) -> Arc<AdapterDoc> {
        Arc::new(AdapterDoc {
            card: AdapterCard::new(AdapterId::Civitai(id), format!("adapter {id}"), "LORA"),
            description: String::new(),
            recommended_weight: 0.8,
            category: Category::Concept,
            embedding_text: String::new(),
            refiner: "test".into(),
        })
    }

    /// A composition whose topics hold `sizes[i]` adapters each.
    fn composition(sizes: &[usize]) -> Composition {
        let mut next = 0;
        Composition {
            topics: sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| TopicAdapters {
                    topic: Topic {
                        text: format!("topic {i}"),
                    },
                    adapters: (0..n)
                        .map(|_| {
                            next += 1;
                            doc(next)
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    fn distinct(masks: &[Mask]) -> usize {
        masks.iter().collect::<HashSet<_>>().len()
    }

    fn shapes_match(masks: &[Mask], sizes: &[usize]) -> bool {
        masks.iter().all(|m| {
            m.active.len() == sizes.len() && m.active.iter().zip(sizes).all(|(a, &n)| a.len() == n)
        })
    }

    #[test]
    fn all_is_one_mask_with_everything_on() {
        let sizes = [2, 0, 3];
        let masks = StrategyMasker::new(MaskStrategy::All).masks(&composition(&sizes));
        assert_eq!(masks.len(), 1);
        assert!(shapes_match(&masks, &sizes));
        assert!(masks[0].active.iter().flatten().all(|&on| on));
    }

    #[test]
    fn one_hot_loras_is_every_subset_per_topic_crossed() {
        let sizes = [2, 0, 3, 1];
        let masks = StrategyMasker::new(MaskStrategy::OneHotLoras).masks(&composition(&sizes));
        assert_eq!(masks.len(), 4 * 8 * 2);
        assert_eq!(distinct(&masks), masks.len());
        assert!(shapes_match(&masks, &sizes));
        // Everything on first; the all-off mask is there too.
        assert!(masks[0].active.iter().flatten().all(|&on| on));
        assert!(
            masks
                .iter()
                .any(|m| m.active.iter().flatten().all(|&on| !on))
        );
        // Each topic's projection covers every subset of its adapters.
        for (t, &n) in sizes.iter().enumerate() {
            let projections: HashSet<&Vec<bool>> = masks.iter().map(|m| &m.active[t]).collect();
            assert_eq!(projections.len(), 1 << n, "topic {t}");
        }
    }

    #[test]
    fn one_hot_concepts_switches_whole_topics() {
        let sizes = [2, 0, 3, 1];
        let masks = StrategyMasker::new(MaskStrategy::OneHotConcepts).masks(&composition(&sizes));
        // Three topics with adapters: 2^3 combinations; the empty topic does not multiply them.
        assert_eq!(masks.len(), 8);
        assert_eq!(distinct(&masks), 8);
        assert!(shapes_match(&masks, &sizes));
        for m in &masks {
            for topic in &m.active {
                assert!(topic.iter().all(|&on| on) || topic.iter().all(|&on| !on));
            }
        }
        assert!(masks[0].active.iter().flatten().all(|&on| on));
    }

    #[test]
    fn no_adapters_still_gives_one_mask() {
        for strategy in [
            MaskStrategy::All,
            MaskStrategy::OneHotLoras,
            MaskStrategy::OneHotConcepts,
        ] {
            let masks = StrategyMasker::new(strategy).masks(&composition(&[0, 0]));
            assert_eq!(
                masks,
                vec![Mask {
                    active: vec![vec![], vec![]]
                }]
            );
        }
    }

    #[test]
    fn large_products_are_sampled_to_the_cap_deterministically() {
        // 5 topics x 3 adapters: 8^5 = 32768 subsets, over the cap.
        let sizes = [3; 5];
        let masker = StrategyMasker::new(MaskStrategy::OneHotLoras);
        let masks = masker.masks(&composition(&sizes));
        assert_eq!(masks.len(), MAX_ENUMERATED_MASKS);
        assert_eq!(distinct(&masks), MAX_ENUMERATED_MASKS);
        assert!(shapes_match(&masks, &sizes));
        assert!(masks[0].active.iter().flatten().all(|&on| on));
        assert_eq!(masks, masker.masks(&composition(&sizes)));

        // A small cap applies to one_hot_concepts too.
        let small = StrategyMasker::new(MaskStrategy::OneHotConcepts).with_max_masks(5);
        let masks = small.masks(&composition(&[1, 1, 1]));
        assert_eq!(masks.len(), 5);
        assert_eq!(distinct(&masks), 5);
    }

    #[test]
    fn seeded_sampling_is_deterministic_and_avoids_repeats() {
        let masker = StrategyMasker::new(MaskStrategy::OneHotLoras);
        let comp = composition(&[2, 1]); // 8 masks
        let a = masker.sample(&comp, 6, 42);
        assert_eq!(a, masker.sample(&comp, 6, 42));
        assert_eq!(distinct(&a), 6);
        assert_ne!(a, masker.sample(&comp, 6, 43));
        // More images than masks: every mask used, then cycled.
        let b = masker.sample(&comp, 10, 1);
        assert_eq!(b.len(), 10);
        assert_eq!(distinct(&b), 8);
    }
}
