//! `stylus eval segmentation`: our topics (the local composer's segmentation) against the
//! reference Stylus composer's topics on PartiPrompts.

use stylus_composer::segmentation_eval::{content_words_baseline, whole_prompt_baseline};
use stylus_composer::{SegmentationReport, evaluate_segmentation, read_parti_csv, segment};
use stylus_core::StylusError;

use super::SegmentationArgs;

pub fn run(args: &SegmentationArgs) -> Result<(), StylusError> {
    let rows = read_parti_csv(&args.parti)?;
    let report = evaluate_segmentation(&rows, |prompt| {
        segment(prompt).into_iter().map(|s| s.text).collect()
    });
    let baselines = [
        (
            "whole_prompt",
            evaluate_segmentation(&rows, whole_prompt_baseline),
        ),
        (
            "content_words",
            evaluate_segmentation(&rows, content_words_baseline),
        ),
    ];
    if args.json {
        let json = serde_json::json!({
            "local": report,
            "baselines": baselines.iter().map(|(n, r)| (n.to_string(), serde_json::json!(r))).collect::<serde_json::Map<_, _>>(),
        });
        let json = serde_json::to_string_pretty(&json).map_err(|e| StylusError::Json {
            path: "<report>".into(),
            line: None,
            message: e.to_string(),
        })?;
        println!("{json}");
        return Ok(());
    }
    println!("{}", args.parti.display());
    println!(
        "rows scored: {} (skipped: {} without reference output, {} with no reference topic)",
        report.rows, report.skipped_empty, report.skipped_no_topics
    );
    print_scores("local segmenter", &report);
    for (name, baseline) in &baselines {
        print_scores(&format!("baseline {name}"), baseline);
    }
    Ok(())
}

fn print_scores(name: &str, report: &SegmentationReport) {
    println!("{name}:");
    for (level, prf) in [("topics", report.topic), ("words ", report.word)] {
        println!(
            "  {level}: precision {:.3}  recall {:.3}  F1 {:.3}  ({} matched, {} predicted, {} reference)",
            prf.precision, prf.recall, prf.f1, prf.matched, prf.predicted, prf.reference
        );
    }
}
