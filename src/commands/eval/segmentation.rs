//! `stylus eval segmentation`: our topics (the local composer's segmentation) against the
//! reference Stylus composer's topics on PartiPrompts.

use std::io::Write;
use std::path::Path;
use stylus_composer::segmentation_eval::{content_words_baseline, whole_prompt_baseline};

use stylus_composer::{
    ReferenceRow, SegmentationReport, evaluate_segmentation, read_parti_csv, segment,
};
use stylus_core::StylusError;

use super::SegmentationArgs;

pub fn run(args: &SegmentationArgs) -> Result<(), StylusError> {
    let rows = read_parti_csv(&args.parti)?;
    let ours =
        |prompt: &str| -> Vec<String> { segment(prompt).into_iter().map(|s| s.text).collect() };
    let report = evaluate_segmentation(&rows, ours);
    if let Some(path) = &args.details {
        write_details(path, &rows, ours)?;
    }
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
            source: Some(Box::new(e)),
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

/// One JSON line per prompt with reference topics: `{"prompt", "reference", "ours"}`.
fn write_details(
    path: &Path,
    rows: &[ReferenceRow],
    segmenter: impl Fn(&str) -> Vec<String>,
) -> Result<(), StylusError> {
    let io = |e| StylusError::io(path, e);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    for row in rows {
        let Some(reference) = row.topics.as_ref().filter(|t| !t.is_empty()) else {
            continue;
        };
        let line = serde_json::json!({
            "prompt": row.prompt,
            "reference": reference.iter().map(|t| &t.text).collect::<Vec<_>>(),
            "ours": segmenter(&row.prompt),
        });
        writeln!(out, "{line}").map_err(io)?;
    }
    out.flush().map_err(io)
}
