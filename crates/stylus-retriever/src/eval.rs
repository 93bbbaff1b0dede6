//! Retrieval quality: where does the adapter a prompt was made with land in a ranking?

use serde::Serialize;
use stylus_core::{AdapterId, Candidate};

/// One evaluation query and the adapter it should find.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalCase {
    pub query: String,
    pub target: AdapterId,
}

/// Recall@1/10/150 and mean reciprocal rank of the target over a set of queries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankingMetrics {
    /// Which configuration produced the rankings.
    pub name: String,
    pub queries: usize,
    pub recall_at_1: f64,
    pub recall_at_10: f64,
    pub recall_at_150: f64,
    /// Mean of 1 / rank of the target (0 when it is not in the ranking).
    pub mrr: f64,
}

impl RankingMetrics {
    /// Scores one ranking per case (same order as `cases`).
    pub fn score(name: impl Into<String>, cases: &[EvalCase], rankings: &[Vec<Candidate>]) -> Self {
        assert_eq!(cases.len(), rankings.len(), "one ranking per case");
        let ranks: Vec<Option<usize>> = cases
            .iter()
            .zip(rankings)
            .map(|(case, ranking)| ranking.iter().position(|c| c.doc.id() == &case.target))
            .collect();
        Self::from_ranks(name, &ranks)
    }

    /// From the 0-based rank of each case's target (`None`: not retrieved).
    pub fn from_ranks(name: impl Into<String>, ranks: &[Option<usize>]) -> Self {
        let n = ranks.len().max(1) as f64;
        let within =
            |k: usize| ranks.iter().filter(|r| r.is_some_and(|r| r < k)).count() as f64 / n;
        Self {
            name: name.into(),
            queries: ranks.len(),
            recall_at_1: within(1),
            recall_at_10: within(10),
            recall_at_150: within(150),
            mrr: ranks
                .iter()
                .map(|r| r.map_or(0.0, |r| 1.0 / (r + 1) as f64))
                .sum::<f64>()
                / n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_from_ranks() {
        let m = RankingMetrics::from_ranks("t", &[Some(0), Some(4), Some(149), None]);
        assert_eq!(m.queries, 4);
        assert_eq!(
            (m.recall_at_1, m.recall_at_10, m.recall_at_150),
            (0.25, 0.5, 0.75)
        );
        let mrr = (1.0 + 0.2 + 1.0 / 150.0) / 4.0;
        assert!((m.mrr - mrr).abs() < 1e-12);
    }
}
