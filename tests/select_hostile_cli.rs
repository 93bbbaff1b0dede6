//! `stylus select --prompts FILE` on hostile prompts (mixed scripts, emoji, zero-width, bidi and
//! control characters, prompt syntax, ~100 KB lines) with the bundled catalog: exit 0 and one
//! JSON plan per prompt line. With ../shared, also on the 1,632 Parti prompts.

use std::path::Path;
use std::process::Command;

use stylus_core::text::clean_prompt;
use stylus_test_data::hostile::hostile_prompts;

/// Runs `stylus select --prompts` on `lines` and checks one plan per non-blank line, in order.
fn select_every_line(dir: &Path, lines: &[String]) {
    let file = dir.join("prompts.txt");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_stylus"))
        .args(["select", "--json", "--prompts"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    // `--prompts` reads one prompt per line, trimmed, blank lines skipped.
    let expected: Vec<&str> = lines
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    let stdout = String::from_utf8(output.stdout).expect("plans are UTF-8 JSON");
    let plans: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON plan per line"))
        .collect();
    assert_eq!(plans.len(), expected.len());
    for (plan, prompt) in plans.iter().zip(&expected) {
        // Plans carry the prompt as selected: control characters and escapes removed.
        assert_eq!(plan["prompt"].as_str(), Some(clean_prompt(prompt).as_str()));
        assert!(plan["a1111_prompt"].is_string(), "{plan}");
        assert!(
            plan["topics"].is_array() && plan["masks"].is_array(),
            "{plan}"
        );
        for topic in plan["topics"].as_array().unwrap() {
            let text = topic["text"].as_str().unwrap();
            assert!(
                clean_prompt(prompt).contains(text),
                "topic {text:?} is not in the prompt"
            );
        }
    }
}

#[test]
fn select_gives_a_plan_for_every_hostile_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = hostile_prompts();
    assert!(prompts.iter().any(|p| p.len() >= 100_000));
    select_every_line(dir.path(), &prompts);
}

#[test]
fn select_gives_a_plan_for_every_parti_prompt() {
    let Some(csv) = stylus_test_data::shared("data/stylus/parti_prompts.csv") else {
        return;
    };
    let rows = stylus_composer::read_parti_csv(&csv).unwrap();
    assert_eq!(rows.len(), 1632);
    let captions: Vec<String> = rows
        .iter()
        .map(|r| r.prompt.replace(['\n', '\r'], " "))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    select_every_line(dir.path(), &captions);
}
