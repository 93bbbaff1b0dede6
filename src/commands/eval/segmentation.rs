//! `stylus eval segmentation`: our topics (the local composer's segmentation) against the
//! reference Stylus composer's topics on PartiPrompts.

use stylus_composer::{evaluate_segmentation, read_parti_csv, segment};
use stylus_core::StylusError;

use super::SegmentationArgs;

pub fn run(args: &SegmentationArgs) -> Result<(), StylusError> {
    let rows = read_parti_csv(&args.parti)?;
    let report = evaluate_segmentation(&rows, |prompt| {
        segment(prompt).into_iter().map(|s| s.text).collect()
    });
    if args.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| StylusError::Json {
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
    for (name, prf) in [("topics", report.topic), ("words ", report.word)] {
        println!(
            "{name}: precision {:.3}  recall {:.3}  F1 {:.3}  ({} matched, {} predicted, {} reference)",
            prf.precision, prf.recall, prf.f1, prf.matched, prf.predicted, prf.reference
        );
    }
    Ok(())
}
