//! Issue 20: a careless or hostile user loses nothing and waits for nothing. Each test replays
//! one case as a user would (the binary, temp dirs) and checks the exit code, the message and
//! that every file that was there before is byte-identical afterwards.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn stylus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stylus"))
        .args(args)
        .env_remove("STYLUS_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A Civitai model item that passes the default filters (SD 1.5, a .safetensors file).
fn civitai_item(id: u64, name: &str) -> String {
    serde_json::json!({
        "id": id,
        "name": name,
        "type": "LORA",
        "description": format!("<p>{name} style for portraits</p>"),
        "tags": ["style", name],
        "modelVersions": [{
            "id": id * 10,
            "name": "v1",
            "baseModel": "SD 1.5",
            "trainedWords": [format!("{name} style")],
            "files": [{"name": format!("{name}.safetensors"), "type": "Model",
                       "hashes": {"SHA256": "AB"}}],
            "images": [{"url": "https://example.invalid/1.png", "meta": {"prompt": "a cat"}}]
        }]
    })
    .to_string()
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// A good store of three adapters at `root/store`, built from `root/good.jsonl`.
fn good_store(root: &Path) -> PathBuf {
    let catalog = root.join("good.jsonl");
    let lines: Vec<String> = ["watercolor", "cyberpunk", "pixelart"]
        .iter()
        .enumerate()
        .map(|(i, name)| civitai_item(100 + i as u64, name))
        .collect();
    std::fs::write(&catalog, lines.join("\n") + "\n").unwrap();
    let store = root.join("store");
    let output = stylus(&[
        "index",
        "--civitai",
        catalog.to_str().unwrap(),
        "--out",
        store.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    store
}

#[test]
fn index_never_replaces_a_good_store_with_an_empty_one() {
    let root = tempfile::tempdir().unwrap();
    let store = good_store(root.path());
    let before = snapshot(&store);
    assert!(before.len() >= 3);

    let empty_file = root.path().join("empty.jsonl");
    std::fs::write(&empty_file, "").unwrap();
    let garbage = root.path().join("garbage.jsonl");
    std::fs::write(&garbage, "not json\n{also not\n\u{1b}[31m\n").unwrap();
    let empty_dir = root.path().join("empty-dir");
    std::fs::create_dir(&empty_dir).unwrap();
    let typo = root.path().join("typo.jsonl");

    for (source, expected) in [
        (&typo, "no such file"),
        (&empty_file, "nothing to index"),
        (&garbage, "nothing to index"),
        (&empty_dir, "nothing to index"),
    ] {
        let output = stylus(&[
            "index",
            "--civitai",
            source.to_str().unwrap(),
            "--out",
            store.to_str().unwrap(),
        ]);
        let err = stderr(&output);
        assert!(!output.status.success(), "{}: {err}", source.display());
        assert!(err.contains(expected), "{}: {err}", source.display());
        assert!(
            err.contains(source.file_name().unwrap().to_str().unwrap()) || err.contains("store"),
            "{err}"
        );
        assert_eq!(snapshot(&store), before, "{}", source.display());
    }
    // A missing --lora-dir is refused the same way.
    let output = stylus(&[
        "index",
        "--lora-dir",
        root.path().join("no-loras").to_str().unwrap(),
        "--out",
        store.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("no-loras"), "{}", stderr(&output));
    assert_eq!(snapshot(&store), before);
    // Nothing but the store, its catalog and the inputs is left beside it (no temp dirs, locks).
    let names: Vec<String> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn a_second_writer_of_one_store_fails_clearly_while_the_first_holds_the_lock() {
    let root = tempfile::tempdir().unwrap();
    let store = good_store(root.path());
    let before = snapshot(&store);
    // Hold the lock as a running `stylus index` does.
    let lock = stylus_refiner::store::StoreLock::acquire(&store).unwrap();
    let output = stylus(&[
        "index",
        "--civitai",
        root.path().join("good.jsonl").to_str().unwrap(),
        "--out",
        store.to_str().unwrap(),
    ]);
    let err = stderr(&output);
    assert!(!output.status.success(), "{err}");
    assert!(err.contains("another stylus process is writing"), "{err}");
    assert_eq!(snapshot(&store), before);
    // Readers are not blocked by a writer.
    let output = stylus(&["retrieve", "--index", store.to_str().unwrap(), "cyberpunk"]);
    assert!(output.status.success(), "{}", stderr(&output));
    drop(lock);
    let output = stylus(&[
        "index",
        "--civitai",
        root.path().join("good.jsonl").to_str().unwrap(),
        "--out",
        store.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn concurrent_index_runs_never_both_write() {
    let root = tempfile::tempdir().unwrap();
    let store = good_store(root.path());
    let catalog = root.path().join("good.jsonl");
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_stylus"))
            .args(["index", "--civitai"])
            .arg(&catalog)
            .arg("--out")
            .arg(&store)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children: Vec<_> = (0..4).map(|_| spawn()).collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        // Each run either wrote the store or said another writer holds it.
        assert!(
            output.status.success() || stderr(&output).contains("another stylus process"),
            "{}",
            stderr(&output)
        );
    }
    let opened = stylus_refiner::store::StylusDocs::open(&store).unwrap();
    assert_eq!(opened.len(), 3);
}
