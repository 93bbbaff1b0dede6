//! Partial top-K selection (no full sort of the catalog) with a deterministic order.

use std::cmp::Ordering;

/// A search result: the document's row in the catalog and its cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub index: usize,
    pub score: f32,
}

/// Best first; equal scores by catalog order, so results never depend on thread scheduling.
pub fn rank_order(a: &Hit, b: &Hit) -> Ordering {
    b.score.total_cmp(&a.score).then(a.index.cmp(&b.index))
}

/// Keeps the `k` best hits of `hits`, sorted best first. `select_nth_unstable_by` does the
/// partition in linear time; only the kept `k` are sorted.
pub fn top_k(mut hits: Vec<Hit>, k: usize) -> Vec<Hit> {
    if hits.len() > k {
        if k > 0 {
            hits.select_nth_unstable_by(k - 1, rank_order);
        }
        hits.truncate(k);
    }
    hits.sort_unstable_by(rank_order);
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_best_k_in_order_with_ties_by_index() {
        let scores = [0.1, 0.9, 0.5, 0.9, -0.3, 0.7];
        let hits: Vec<Hit> = scores
            .iter()
            .enumerate()
            .map(|(index, &score)| Hit { index, score })
            .collect();
        let best: Vec<usize> = top_k(hits.clone(), 3).iter().map(|h| h.index).collect();
        assert_eq!(best, vec![1, 3, 5]);
        assert_eq!(top_k(hits.clone(), 10).len(), 6);
        assert!(top_k(hits, 0).is_empty());
    }
}
