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

/// The store's saved BM25 postings: read at open; damaged, a typed error naming the file; of
/// another layout version or missing (an older store), rebuilt in memory with the same ranking.
#[test]
fn saved_bm25_postings_damaged_old_or_missing() {
    use stylus_refiner::store::{FileEntry, MANIFEST_FILE, Manifest};
    const BM25: &str = "bm25.postings";
    let root = tempfile::tempdir().unwrap();
    let store = good_store(root.path());
    let path = store.join(BM25);
    let good = std::fs::read(&path).unwrap();
    let query = |store: &Path| {
        stylus(&[
            "retrieve",
            "--json",
            "--index",
            store.to_str().unwrap(),
            "cyberpunk style",
        ])
    };
    let ranking = |output: &Output| -> Vec<serde_json::Value> {
        assert!(output.status.success(), "{}", stderr(output));
        let line: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        line["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| serde_json::json!([r["id"], r["bm25"]]))
            .collect()
    };
    let expected = ranking(&query(&store));
    assert!(expected[0][1]["score"].as_f64().unwrap() > 0.0);
    // Rewrites the postings file and (with `fix`) its manifest entry.
    let replace = |bytes: Option<&[u8]>, fix: bool| {
        let manifest_path = store.join(MANIFEST_FILE);
        let mut manifest: Manifest =
            serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
        match bytes {
            Some(bytes) => {
                std::fs::write(&path, bytes).unwrap();
                if fix {
                    manifest.files.insert(BM25.into(), FileEntry::of(bytes));
                }
            }
            None => {
                let _ = std::fs::remove_file(&path);
                manifest.files.remove(BM25);
            }
        }
        std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    };

    // One byte flipped: the checksum names the file.
    let mut flipped = good.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x40;
    replace(Some(&flipped), false);
    let output = query(&store);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains(BM25), "{}", stderr(&output));
    // Truncated with a matching checksum (made by hand): the layout check names it.
    replace(Some(&good[..good.len() - 4]), true);
    let output = query(&store);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains(BM25) && stderr(&output).contains("damaged"),
        "{}",
        stderr(&output)
    );
    // Another layout version: rebuilt in memory, same ranking.
    let mut other = good.clone();
    other[8] = other[8].wrapping_add(1);
    replace(Some(&other), true);
    let output = query(&store);
    assert!(
        stderr(&output).contains("rebuilding"),
        "{}",
        stderr(&output)
    );
    assert_eq!(ranking(&output), expected);
    // An older store without the file: the same ranking; indexing again saves it.
    replace(None, false);
    assert_eq!(ranking(&query(&store)), expected);
    let output = stylus(&[
        "index",
        "--civitai",
        root.path().join("good.jsonl").to_str().unwrap(),
        "--out",
        store.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(std::fs::read(&path).unwrap(), good);
    assert_eq!(ranking(&query(&store)), expected);
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

fn diffusion_fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/stylus-diffusion/tests/fixtures")
        .join(path)
}

#[test]
fn retrieve_top_k_is_bounded_before_any_work() {
    let output = stylus(&["retrieve", "--top-k", "99999999999", "a cat"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("1..=100000"),
        "{}",
        stderr(&output)
    );
    let output = stylus(&["retrieve", "--top-k", "0", "a cat"]);
    assert_eq!(output.status.code(), Some(2));
    // The largest allowed K gives every document once, no more.
    let output = stylus(&["retrieve", "--json", "--top-k", "100000", "a cat"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let line: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let n = line["results"].as_array().unwrap().len();
    assert!(n > 10 && n < 100_000, "{n}");
    // The config file's limits too, naming the key.
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("c.toml");
    std::fs::write(&config, "[retriever]\ntop_k = 99999999999\n").unwrap();
    let output = stylus(&["--config", config.to_str().unwrap(), "retrieve", "a cat"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("retriever.top_k"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn merge_never_overwrites_an_existing_file_without_force() {
    let root = tempfile::tempdir().unwrap();
    let precious = root.path().join("precious.txt");
    std::fs::write(&precious, "my notes").unwrap();
    let base = diffusion_fixture("sd/tiny-ldm.safetensors");
    let lora = diffusion_fixture("lora/kohya_lora.safetensors");
    let merge = |extra: &[&str]| {
        let mut args = vec![
            "merge",
            "--base",
            base.to_str().unwrap(),
            "--lora",
            lora.to_str().unwrap(),
            "--out",
            precious.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        stylus(&args)
    };
    let output = merge(&[]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("already exists"),
        "{}",
        stderr(&output)
    );
    assert!(stderr(&output).contains("--force"));
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "my notes");
    // A bad weight is a bad weight, not a missing file.
    let output = stylus(&[
        "merge",
        "--base",
        base.to_str().unwrap(),
        "--lora",
        &format!("{}:abc", lora.display()),
        "--out",
        root.path().join("new.safetensors").to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("bad weight `abc`"),
        "{}",
        stderr(&output)
    );
    assert!(!root.path().join("new.safetensors").exists());
    // With --force the file is replaced by the merge, whole.
    let output = merge(&["--force"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(std::fs::read(&precious).unwrap().len() > 1000);
    let leftovers: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn generate_checks_its_arguments_before_loading_the_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    // Not a checkpoint at all: any error about it would mean it was loaded first.
    let checkpoint = root.path().join("model.safetensors");
    std::fs::write(&checkpoint, b"not a checkpoint").unwrap();
    let lora = diffusion_fixture("lora/kohya_lora.safetensors");
    let out = root.path().join("out");
    let generate = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--no-select",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.push("a cat");
        stylus(&args)
    };
    for (extra, needle) in [
        (&["--steps", "0"][..], "--steps 0: must be in 1..=1000"),
        (&["--steps", "5000"][..], "1..=1000"),
        (
            &["--width", "513"][..],
            "--width 513: must be a multiple of 8",
        ),
        (&["--height", "100000"][..], "8..=2048"),
        (&["--cfg", "NaN"][..], "--cfg NaN"),
        (&["--cfg", "1000"][..], "0..=50"),
        (&["--clip-skip", "0"][..], "--clip-skip 0: must be 1"),
        (&["--clip-skip", "50"][..], "--clip-skip 50: must be 1"),
        // A clap value enum: refused while parsing, with every name.
        (
            &["--sampler", "bogus"][..],
            "possible values: ddim, euler, euler_ancestral, dpmpp_2m, dpmpp_2m_karras, pndm",
        ),
        (&["--batch", "100000"][..], "1..=256"),
    ] {
        let output = generate(extra);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
        assert!(!err.contains("model.safetensors"), "{extra:?}: {err}");
        assert!(!out.exists(), "{extra:?}");
    }
    // `bench` takes its device and dtype as value enums too, refused before the checkpoint or
    // the inputs are read.
    for (extra, needle) in [
        (&["--dtype", "f64"][..], "possible values: f32, f16"),
        (&["--device", "tpu"][..], "possible values: cpu, wgpu, cuda"),
    ] {
        let mut args = vec!["bench", "--checkpoint", "missing", "--inputs", "missing"];
        args.extend_from_slice(extra);
        let output = stylus(&args);
        assert_eq!(output.status.code(), Some(2), "{extra:?}");
        assert!(stderr(&output).contains(needle), "{}", stderr(&output));
    }
    // `--lora FILE:abc` is a bad weight, not a missing file.
    let output = generate(&["--lora", &format!("{}:abc", lora.display())]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("bad weight `abc`"),
        "{}",
        stderr(&output)
    );
    // Selection without --lora-dir says what is missing.
    let output = stylus(&[
        "generate",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "a cat",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--lora-dir"),
        "{}",
        stderr(&output)
    );

    // --out naming an existing file: a clear message, the file untouched.
    let file = root.path().join("notes.txt");
    std::fs::write(&file, "keep").unwrap();
    let output = stylus(&[
        "generate",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--no-select",
        "--out",
        file.to_str().unwrap(),
        "a cat",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("an existing file"),
        "{}",
        stderr(&output)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    // Images of an earlier run are not overwritten without --force.
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("0000.png"), "earlier image").unwrap();
    let output = generate(&[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("0000.png: already exists"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        std::fs::read_to_string(out.join("0000.png")).unwrap(),
        "earlier image"
    );
    // --negative has help text.
    let output = stylus(&["generate", "--help"]);
    let help = String::from_utf8_lossy(&output.stdout);
    // clap puts the text on the flag's line, or on the next one when the help is long.
    let lines: Vec<&str> = help.lines().collect();
    let negative = lines.iter().position(|l| l.contains("--negative"));
    assert!(
        negative.is_some_and(|i| lines[i..(i + 2).min(lines.len())]
            .iter()
            .any(|l| l.contains("Negative prompt"))),
        "{help}"
    );
}

/// A server on 127.0.0.1 that accepts connections and never answers; returns its base URL.
fn silent_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            // Keep the connection open, say nothing.
            held.push(stream);
        }
    });
    url
}

fn select_llm(url: &str, flags: &[&str], env: &[(&str, &str)]) -> (Output, std::time::Duration) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stylus"));
    command
        .args(flags)
        .args(["select", "--composer", "llm", "a cat in a hat"])
        .env("STYLUS_LLM_BASE_URL", url)
        .env("STYLUS_LLM_MODEL", "stub")
        .env_remove("STYLUS_LLM_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .env_remove("STYLUS_CONFIG")
        .env_remove("RUST_LOG");
    for (name, value) in env {
        command.env(name, value);
    }
    let started = std::time::Instant::now();
    let output = command.output().unwrap();
    (output, started.elapsed())
}

#[test]
fn a_silent_llm_server_is_given_up_on_within_the_limits_set() {
    let url = silent_server();
    // From the command line: 3 s per request, no retry; progress lines while waiting.
    let (output, took) = select_llm(&url, &["--timeout", "3", "--retries", "0"], &[]);
    let err = stderr(&output);
    assert!(!output.status.success(), "{err}");
    assert!(took.as_secs_f64() < 15.0, "{took:?}");
    assert!(err.contains("timed out after 3 s"), "{err}");
    assert!(err.contains("waiting for"), "no progress line: {err}");

    // From the environment: 0.5 s per request, 5 retries, but a 2 s deadline over them all.
    let (output, took) = select_llm(
        &url,
        &[],
        &[
            ("STYLUS_LLM_TIMEOUT", "0.5"),
            ("STYLUS_LLM_RETRIES", "5"),
            ("STYLUS_DEADLINE", "2"),
        ],
    );
    let err = stderr(&output);
    assert!(!output.status.success(), "{err}");
    assert!(took.as_secs_f64() < 10.0, "{took:?}");
    assert!(err.contains("deadline of 2 s"), "{err}");

    // From the config file.
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("c.toml");
    std::fs::write(&config, "[network]\ntimeout_secs = 0.5\nretries = 0\n").unwrap();
    let (output, took) = select_llm(&url, &["--config", config.to_str().unwrap()], &[]);
    assert!(!output.status.success());
    assert!(took.as_secs_f64() < 10.0, "{took:?}");
    assert!(
        stderr(&output).contains("timed out after 0.5 s"),
        "{}",
        stderr(&output)
    );

    // A bad value is refused, naming where it came from.
    let (output, _) = select_llm(&url, &[], &[("STYLUS_LLM_TIMEOUT", "soon")]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("STYLUS_LLM_TIMEOUT=soon"),
        "{}",
        stderr(&output)
    );
    let (output, _) = select_llm(&url, &["--timeout", "-1"], &[]);
    assert_eq!(output.status.code(), Some(2));
}

/// The number of times a chat model is asked while its replies are unusable: the flag, the
/// environment and the config set it, within 1..=20.
#[test]
fn llm_reply_attempts_are_settable_and_bounded() {
    use stylus_core::openai::testing::{StubReply, StubServer};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("c.toml");
    std::fs::write(&config, "[network]\nreply_attempts = 1\n").unwrap();
    let config = config.to_str().unwrap().to_string();
    // (flags, environment, requests expected)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], usize);
    let cases: [Case; 4] = [
        (&["--reply-attempts", "2"], &[], 2),
        (&[], &[("STYLUS_LLM_REPLY_ATTEMPTS", "4")], 4),
        (&["--config", &config], &[], 1),
        (&[], &[], 3),
    ];
    for (flags, env, asked) in cases {
        let server = runtime.block_on(StubServer::sequence(vec![StubReply::chat(
            "sorry, no JSON today",
        )]));
        let (output, _) = select_llm(&server.base_url(), flags, env);
        let err = stderr(&output);
        assert!(!output.status.success(), "{err}");
        assert_eq!(server.request_count(), asked, "{flags:?} {env:?}: {err}");
        assert!(err.contains(&format!("{asked} attempt")), "{err}");
    }
    // Out of range, from each source: refused before any request, naming the source.
    let server = runtime.block_on(StubServer::sequence(vec![StubReply::chat("{}")]));
    let (output, _) = select_llm(&server.base_url(), &["--reply-attempts", "0"], &[]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let (output, _) = select_llm(&server.base_url(), &["--reply-attempts", "21"], &[]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let (output, _) = select_llm(&server.base_url(), &[], &[("STYLUS_REPLY_ATTEMPTS", "99")]);
    let err = stderr(&output);
    assert!(
        !output.status.success()
            && err.contains("STYLUS_REPLY_ATTEMPTS=99")
            && err.contains("1..=20"),
        "{err}"
    );
    std::fs::write(&config, "[network]\nreply_attempts = 0\n").unwrap();
    let (output, _) = select_llm(&server.base_url(), &["--config", &config], &[]);
    let err = stderr(&output);
    assert!(
        !output.status.success() && err.contains("network.reply_attempts = 0"),
        "{err}"
    );
    assert_eq!(server.request_count(), 0);
}

#[test]
fn escapes_in_prompts_never_reach_the_terminal_or_the_topics() {
    let prompt = "a \u{1b}[31mRED\u{1b}[0m cat\nsitting on a mat\u{7}";
    let output = stylus(&["select", prompt]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text:?}"
    );
    assert!(
        text.starts_with("prompt: a RED cat sitting on a mat\n"),
        "{text}"
    );
    assert!(!text.contains("31m"), "{text}");
    assert!(text.contains("timings: open catalog"), "{text}");

    let output = stylus(&["select", "--json", prompt]);
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(plan["prompt"], "a RED cat sitting on a mat");
    for topic in plan["topics"].as_array().unwrap() {
        assert!(!topic["text"].as_str().unwrap().contains("31m"), "{topic}");
    }
    assert!(plan["timings_ms"]["open"].as_f64().unwrap() > 0.0);

    let output = stylus(&["retrieve", "--top-k", "3", prompt]);
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{text:?}"
    );
    assert_eq!(text.lines().next(), Some("a RED cat sitting on a mat"));
    // Only control characters: nothing is left to search for.
    let output = stylus(&["retrieve", "\u{1b}[0m\n"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn retrieve_shows_the_evidence_behind_each_rank() {
    let output = stylus(&["retrieve", "--json", "--top-k", "5", "a fluffy cat"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let line: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let results = line["results"].as_array().unwrap();
    // BM25 scores: real, decreasing evidence, not 1/(60 + rank).
    let bm25: Vec<f64> = results
        .iter()
        .filter_map(|r| r["bm25"]["score"].as_f64())
        .collect();
    assert!(bm25.len() >= 2 && bm25[0] > 1.0, "{line}");
    assert!(bm25.windows(2).all(|w| w[0] >= w[1]), "{line}");
    assert!(results[0]["vector"]["score"].as_f64().unwrap() > 0.0);
    for key in ["open", "embed", "retrieve"] {
        assert!(line["timings_ms"][key].as_f64().is_some(), "{line}");
    }
    let output = stylus(&["retrieve", "--top-k", "5", "a fluffy cat"]);
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.lines().nth(1).unwrap().contains("bm25"), "{text}");
    // Ranks that matched nothing are one line, not a screen of zeros.
    let output = stylus(&["retrieve", "--top-k", "150", "a fluffy cat"]);
    let long = String::from_utf8(output.stdout).unwrap();
    assert!(long.lines().count() < 40, "{long}");
    assert!(long.contains("more (ranks"), "{long}");
    assert!(!long.contains(" 0.0000 "), "{long}");
    // The printed timings include the catalog's open, the cost of a one-shot run.
    let last = text.lines().last().unwrap();
    assert!(
        last.starts_with("timings: open ") && last.contains("search"),
        "{text}"
    );
}

#[test]
fn logs_to_a_file_carry_no_colour_codes() {
    let root = tempfile::tempdir().unwrap();
    let bad = root.path().join("bad.jsonl");
    std::fs::write(&bad, format!("{{broken\n{}\n", civitai_item(7, "ink"))).unwrap();
    let output = stylus(&[
        "index",
        "--civitai",
        bad.to_str().unwrap(),
        "--out",
        root.path().join("s").to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let err = stderr(&output);
    let out = String::from_utf8_lossy(&output.stdout);
    // The malformed line is reported once (in the summary), without escape codes.
    assert_eq!(
        out.matches("bad.jsonl:1").count() + err.matches("bad.jsonl:1").count(),
        1,
        "{out}{err}"
    );
    assert!(!err.contains('\u{1b}'), "{err:?}");
    // With --json, a warning on stderr (plain text), once.
    let output = stylus(&[
        "index",
        "--json",
        "--civitai",
        bad.to_str().unwrap(),
        "--out",
        root.path().join("s").to_str().unwrap(),
    ]);
    let err = stderr(&output);
    assert_eq!(err.matches("bad.jsonl:1").count(), 1, "{err}");
    assert!(!err.contains('\u{1b}') && err.contains("WARN"), "{err:?}");
}

#[test]
fn each_bad_lora_file_is_reported_once() {
    let root = tempfile::tempdir().unwrap();
    let loras = root.path().join("loras");
    std::fs::create_dir(&loras).unwrap();
    std::fs::write(loras.join("bad.safetensors"), "garbage").unwrap();
    std::fs::copy(
        diffusion_fixture("lora/kohya_lora.safetensors"),
        loras.join("good.safetensors"),
    )
    .unwrap();
    let output = stylus(&[
        "index",
        "--lora-dir",
        loras.to_str().unwrap(),
        "--out",
        root.path().join("s").to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    assert_eq!(all.matches("bad.safetensors").count(), 1, "{all}");
}

#[test]
fn info_explains_files_it_cannot_use_and_fails() {
    let root = tempfile::tempdir().unwrap();
    let text = root.path().join("notes.safetensors");
    std::fs::write(&text, "hello, this is text\n").unwrap();
    let output = stylus(&["info", text.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("not a safetensors file (it starts with text)"),
        "{}",
        stderr(&output)
    );

    let pickle = root.path().join("model.ckpt");
    std::fs::write(&pickle, b"PK\x03\x04 zipped pickle data").unwrap();
    let output = stylus(&["info", pickle.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("can run code"),
        "{}",
        stderr(&output)
    );

    let lora = std::fs::read(diffusion_fixture("lora/kohya_lora.safetensors")).unwrap();
    let truncated = root.path().join("cut.safetensors");
    std::fs::write(&truncated, &lora[..992]).unwrap();
    let output = stylus(&["info", truncated.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("bytes announced, 984 present"),
        "{}",
        stderr(&output)
    );

    // A valid safetensors file that is no LoRA for SD 1.x: described, then a failure.
    let data = vec![0u8; 16];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &data).unwrap();
    let odd = root.path().join("odd.safetensors");
    safetensors::serialize_to_file([("something.else", view)], None, &odd).unwrap();
    let output = stylus(&["info", odd.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("kind:"));
    assert!(
        stderr(&output).contains("does not load on SD 1.x"),
        "{}",
        stderr(&output)
    );

    // A real SD 1.5 LoRA is described and succeeds.
    let real = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/loras/smart_falcon_4_lokr.safetensors");
    if !real.exists() {
        eprintln!("skipped: {} is absent", real.display());
        return;
    }
    let output = stylus(&["info", real.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    // A reader that stops early (`| head -1`) is no failure and no panic.
    let mut child = Command::new(env!("CARGO_BIN_EXE_stylus"))
        .args(["info", real.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!stderr(&output).contains("panicked"), "{}", stderr(&output));
}

#[test]
fn an_unchanged_reindex_reuses_everything_and_rewrites_nothing() {
    let root = tempfile::tempdir().unwrap();
    let store = good_store(root.path());
    let manifest = store.join("manifest.json");
    let before = snapshot(&store);
    let modified = std::fs::metadata(&manifest).unwrap().modified().unwrap();
    let catalog = root.path().join("good.jsonl");
    let output = stylus(&[
        "index",
        "--json",
        "--civitai",
        catalog.to_str().unwrap(),
        "--out",
        store.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["unchanged"], true, "{summary}");
    assert!(summary["phases_s"].as_array().is_some_and(|p| p.len() == 7));
    assert_eq!(snapshot(&store), before);
    assert_eq!(
        std::fs::metadata(&manifest).unwrap().modified().unwrap(),
        modified
    );

    // One changed card: refined again, the store rewritten.
    let mut text = std::fs::read_to_string(&catalog).unwrap();
    text = text.replacen(
        "watercolor style for portraits",
        "watercolor style for landscapes",
        1,
    );
    std::fs::write(&catalog, text).unwrap();
    let output = stylus(&[
        "index",
        "--civitai",
        catalog.to_str().unwrap(),
        "--out",
        store.to_str().unwrap(),
    ]);
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        out.contains("docs written: 3") && out.contains("refined 1, reused 2"),
        "{out}"
    );
    assert_ne!(snapshot(&store), before);
}

#[test]
fn a_missing_embedding_model_is_explained_before_any_work() {
    let root = tempfile::tempdir().unwrap();
    let store = good_store(root.path());
    let before = snapshot(&store);
    let started = std::time::Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_stylus"))
        .args(["index", "--embedder", "bert:~/no-such-model", "--civitai"])
        .arg(root.path().join("good.jsonl"))
        .arg("--out")
        .arg(&store)
        .env("HOME", root.path())
        .output()
        .unwrap();
    let err = stderr(&output);
    assert!(!output.status.success(), "{err}");
    assert!(started.elapsed().as_secs_f64() < 5.0);
    // `~` expanded, the missing files named, the way to get the model given.
    assert!(
        err.contains(&format!("{}/no-such-model", root.path().display())),
        "{err}"
    );
    assert!(
        err.contains("config.json") && err.contains("tools/fetch-minilm.sh"),
        "{err}"
    );
    assert_eq!(snapshot(&store), before);
}

/// A plan that selects no adapter ("no adapter" is a normal answer) is nothing to fetch, not an
/// error; a fetch with neither a plan nor ids still is one.
#[test]
fn fetch_of_a_plan_without_adapters_succeeds_and_touches_no_network() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.json");
    let select = stylus(&["select", "--json", "a castle on a hill"]);
    assert!(select.status.success(), "{}", stderr(&select));
    // Whatever the bundled catalog picks, a plan with its adapters removed selects nothing.
    let mut value: serde_json::Value = serde_json::from_slice(&select.stdout).unwrap();
    for topic in value["topics"].as_array_mut().unwrap() {
        topic["adapters"] = serde_json::json!([]);
    }
    std::fs::write(&plan, value.to_string()).unwrap();
    let cache = dir.path().join("cache");
    let out = stylus(&[
        "fetch",
        "--offline",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--plan",
        plan.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing to fetch"),
        "{}",
        stderr(&out)
    );
    let none = stylus(&["fetch", "--offline", "--cache-dir", cache.to_str().unwrap()]);
    assert!(!none.status.success());
}
