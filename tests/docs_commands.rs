//! Every command shown in README.md and docs/guide.md, run as written (through `sh`, with the
//! built `stylus` first on PATH) in a sandbox where the files they name exist. Commands that need
//! a GPU-sized SD 1.5 checkpoint or a network service are listed as skipped, with the reason.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shell lines of the ```sh blocks of a Markdown file, comments removed.
fn sh_lines(markdown: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut inside = false;
    for line in markdown.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            inside = !inside && trimmed == "```sh";
            continue;
        }
        if inside {
            let command = match trimmed.find("  #") {
                Some(at) => trimmed[..at].trim_end(),
                None => trimmed,
            };
            if !command.is_empty() && !command.starts_with('#') {
                lines.push(command.to_string());
            }
        }
    }
    lines
}

/// Why a documented command is not run here, if it is not.
fn skip_reason(command: &str) -> Option<&'static str> {
    if command.starts_with("cargo test") {
        Some("the test suite itself")
    } else if command.contains(" generate ") || command.contains(" merge ") {
        Some("needs an SD 1.5 checkpoint (GPU-sized)")
    } else if command.contains("--refiner vlm")
        || command.contains("--embedder openai")
        || command.contains("stylus fetch")
    {
        Some("needs a network service")
    } else {
        None
    }
}

fn civitai_item(id: u64, name: &str) -> String {
    serde_json::json!({
        "id": id, "name": name, "type": "LORA",
        "description": format!("<p>{name} for castles, cats and men in the rain</p>"),
        "tags": ["style", name],
        "modelVersions": [{"id": id * 10, "baseModel": "SD 1.5",
            "trainedWords": [format!("{name} style")],
            "files": [{"name": format!("{name}.safetensors"), "type": "Model"}]}]
    })
    .to_string()
}

#[test]
fn documented_commands_run_as_written() {
    let shared = repo().join("../shared/fixtures/loras/smart_falcon_4_lokr.safetensors");
    if !shared.exists() {
        eprintln!("skipped: {} is absent", shared.display());
        return;
    }
    let real_home = std::env::var_os("HOME").map(PathBuf::from);
    let minilm = real_home
        .as_ref()
        .map(|h| h.join(".cache/stylus/models/all-MiniLM-L6-v2"))
        .filter(|d| d.join("model.safetensors").is_file());

    let sandbox = tempfile::tempdir().unwrap();
    let work = sandbox.path().join("work");
    let home = sandbox.path().join("home");
    std::fs::create_dir_all(work.join("dump")).unwrap();
    std::fs::create_dir_all(home.join("loras")).unwrap();
    let cards: Vec<String> = ["gothic_arch", "rainy_city", "cat_rider", "watercolor"]
        .iter()
        .enumerate()
        .map(|(i, n)| civitai_item(10 + i as u64, n))
        .collect();
    let cards = cards.join("\n") + "\n";
    for file in ["cards.jsonl", "civitai_dump.jsonl", "dump/part1.jsonl"] {
        std::fs::write(work.join(file), &cards).unwrap();
    }
    std::fs::copy(&shared, home.join("loras/smart_falcon.safetensors")).unwrap();
    std::fs::copy(&shared, work.join("detail.safetensors")).unwrap();
    if let Some(model) = &minilm {
        std::fs::create_dir_all(home.join("models")).unwrap();
        std::fs::create_dir_all(home.join(".cache/stylus/models")).unwrap();
        #[cfg(unix)]
        for link in [
            home.join("models/all-MiniLM-L6-v2"),
            home.join(".cache/stylus/models/all-MiniLM-L6-v2"),
        ] {
            std::os::unix::fs::symlink(model, link).unwrap();
        }
    }
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_stylus")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let mut ran = 0;
    for doc in ["README.md", "docs/guide.md"] {
        let text = std::fs::read_to_string(repo().join(doc)).unwrap();
        for line in sh_lines(&text) {
            if let Some(reason) = skip_reason(&line) {
                eprintln!("skipped ({reason}): {line}");
                continue;
            }
            if line.contains("--embedder bert") && minilm.is_none() {
                eprintln!("skipped (no MiniLM model; tools/fetch-minilm.sh): {line}");
                continue;
            }
            let shell = line.replace("cargo run -- ", "stylus ");
            let output = Command::new("sh")
                .arg("-c")
                .arg(&shell)
                .current_dir(&work)
                .env("PATH", &path)
                .env("HOME", &home)
                .env_remove("STYLUS_MINILM_DIR")
                .env_remove("STYLUS_CONFIG")
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{doc}: `{line}` failed:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            ran += 1;
        }
    }
    assert!(ran >= 10, "only {ran} documented commands ran");
}
