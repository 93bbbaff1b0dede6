//! `stylus generate` end to end on CPU with the small random-weight SD model (widened to CLIP's
//! vocabulary) and a real kohya LoRA fixture: merge -> 2 steps -> PNGs with A1111 parameters,
//! plan.json, saved latents; the same seed gives the same bytes.

#[path = "../crates/stylus-diffusion/tests/common/full_vocab.rs"]
mod full_vocab;

use std::path::{Path, PathBuf};
use std::process::Command;

fn diffusion_fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/stylus-diffusion/tests/fixtures")
        .join(path)
}

fn generate(checkpoint: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let lora = diffusion_fixture("lora/kohya_lora.safetensors");
    Command::new(env!("CARGO_BIN_EXE_stylus"))
        .arg("generate")
        .arg("--checkpoint")
        .arg(checkpoint)
        .arg("--lora")
        .arg(format!("{}:0.8", lora.display()))
        .args([
            "--batch",
            "2",
            "--steps",
            "2",
            "--sampler",
            "dpmpp_2m_karras",
            "--width",
            "16",
            "--height",
            "16",
            "--seed",
            "5",
            "--negative",
            "blurry",
            "--out",
        ])
        .arg(out)
        .args(extra)
        .arg("a castle on a hill, (golden hour:1.2)")
        .output()
        .unwrap()
}

fn png_parameters(path: &Path) -> (Vec<u8>, String) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((frame.width, frame.height), (16, 16));
    let info = reader.info();
    let text = info
        .uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == "parameters")
        .map(|c| c.text.clone())
        .expect("a parameters chunk");
    (pixels, text)
}

#[test]
fn generate_writes_pngs_with_a1111_parameters_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = full_vocab::full_vocab_checkpoint(
        &diffusion_fixture("sd/tiny-ldm.safetensors"),
        dir.path(),
    );
    let first = dir.path().join("first");
    let latents = dir.path().join("latents.safetensors");
    let output = generate(
        &checkpoint,
        &first,
        &["--save-latents", latents.to_str().unwrap()],
    );
    assert!(
        output.status.success(),
        "stylus generate failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let model_hash = stylus_diffusion::png::model_short_hash(&checkpoint).unwrap();
    let lora_hash =
        stylus_diffusion::png::lora_short_hash(&diffusion_fixture("lora/kohya_lora.safetensors"))
            .unwrap();
    assert_eq!((model_hash.len(), lora_hash.len()), (10, 12));
    let (pixels0, text0) = png_parameters(&first.join("0000.png"));
    assert_eq!(
        text0,
        format!(
            "a castle on a hill, (golden hour:1.2) <lora:kohya_lora:0.8>\n\
             Negative prompt: blurry\n\
             Steps: 2, Sampler: DPM++ 2M Karras, CFG scale: 5, Seed: 5, Size: 16x16, \
             Model hash: {model_hash}, Model: tiny-full-vocab, \
             Lora hashes: \"kohya_lora: {lora_hash}\""
        )
    );
    let (pixels1, text1) = png_parameters(&first.join("0001.png"));
    assert!(text1.contains("Seed: 6,"), "{text1}");
    assert_ne!(pixels0, pixels1);

    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(first.join("plan.json")).unwrap()).unwrap();
    assert_eq!(plan["images"][1]["file"], "0001.png");
    assert_eq!(plan["images"][1]["seed"], 6);
    assert_eq!(plan["images"][0]["adapters"][0]["alias"], "kohya_lora");
    assert_eq!(plan["images"][0]["parameters"], text0.as_str());
    assert_eq!(plan["sampling"]["steps"], 2);

    let bytes = std::fs::read(&latents).unwrap();
    let saved = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(saved.tensor("latents").unwrap().shape(), &[2, 4, 8, 8]);

    // Same request, same bytes.
    let second = dir.path().join("second");
    assert!(generate(&checkpoint, &second, &[]).status.success());
    for file in ["0000.png", "0001.png"] {
        assert_eq!(
            std::fs::read(first.join(file)).unwrap(),
            std::fs::read(second.join(file)).unwrap(),
            "{file}"
        );
    }

    // The saved final latents fed back as initial latents change the picture (and work).
    let third = dir.path().join("third");
    let output = generate(
        &checkpoint,
        &third,
        &["--latents", latents.to_str().unwrap()],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_ne!(png_parameters(&third.join("0000.png")).0, pixels0);
}

#[test]
fn generate_refuses_bad_input_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = full_vocab::full_vocab_checkpoint(
        &diffusion_fixture("sd/tiny-ldm.safetensors"),
        dir.path(),
    );
    let output = Command::new(env!("CARGO_BIN_EXE_stylus"))
        .args([
            "generate",
            "--no-select",
            "--width",
            "20",
            "--steps",
            "1",
            "--checkpoint",
        ])
        .arg(&checkpoint)
        .arg("--out")
        .arg(dir.path().join("o"))
        .arg("a cat")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("multiple of 8"));

    let output = Command::new(env!("CARGO_BIN_EXE_stylus"))
        .args(["generate", "--checkpoint"])
        .arg(&checkpoint)
        .arg("--lora")
        .arg(dir.path().join("missing.safetensors"))
        .arg("--out")
        .arg(dir.path().join("o"))
        .arg("a cat")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.safetensors"));
}

/// Selection on the bundled catalog: the adapters it picks for "a cat" must be found in the LoRA
/// folder (here: real kohya fixtures under the bundled aliases), are merged, and end up in the
/// PNG parameters and plan.json; without the files the error lists what to download.
#[test]
fn generate_selects_merges_and_records_adapters() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = full_vocab::full_vocab_checkpoint(
        &diffusion_fixture("sd/tiny-ldm.safetensors"),
        dir.path(),
    );
    let run = |out: &Path, extra: &[&Path]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_stylus"));
        command.args([
            "generate", "--steps", "2", "--width", "16", "--height", "16",
        ]);
        command
            .args(["--batch", "2", "--checkpoint"])
            .arg(&checkpoint);
        if let Some(loras) = extra.first() {
            command.arg("--lora-dir").arg(loras);
        }
        command.arg("--out").arg(out).arg("a cat").output().unwrap()
    };
    // Without --lora-dir: said before the checkpoint is loaded.
    let output = run(&dir.path().join("missing"), &[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("give --lora-dir"), "{stderr}");

    // A folder without the selected files: the error lists what to download, with its own exit
    // code (3: not a usage error, not a failure of the run).
    let loras = dir.path().join("loras");
    std::fs::create_dir(&loras).unwrap();
    let output = run(&dir.path().join("missing"), &[&loras]);
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("download them first"), "{stderr}");
    for (alias, fixture) in [
        ("stylus_tabby_cat", "kohya_lora"),
        ("stylus_fluffy_cats", "kohya_locon"),
    ] {
        std::fs::copy(
            diffusion_fixture(&format!("lora/{fixture}.safetensors")),
            loras.join(format!("{alias}.safetensors")),
        )
        .unwrap();
    }
    let out = dir.path().join("selected");
    let output = run(&out, &[&loras]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("plan.json")).unwrap()).unwrap();
    assert!(
        plan["selection"]["masks"]
            .as_array()
            .is_some_and(|m| !m.is_empty())
    );
    // Two adapters are selected for "cat" ("Tabby Cat" and "Fluffy Cats"; the default budget),
    // so the two images of the masks are the first alone and both together.
    for (i, file) in ["0000.png", "0001.png"].iter().enumerate() {
        let (_, text) = png_parameters(&out.join(file));
        assert_eq!(plan["images"][i]["parameters"], text.as_str());
        let adapters = plan["images"][i]["adapters"].as_array().unwrap();
        assert_eq!(adapters.len(), i + 1, "{plan}");
        assert!(text.contains("<lora:stylus_tabby_cat"), "{text}");
        assert!(text.contains("Lora hashes: \"stylus_tabby_cat"), "{text}");
        assert_eq!(text.contains("<lora:stylus_fluffy_cats"), i == 1, "{text}");
    }
}

/// A stub download server on 127.0.0.1 (std threads): every GET gets `body`; returns its base
/// URL and the number of requests answered.
fn serve_file(body: Vec<u8>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&hits);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = Vec::new();
            let mut chunk = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&chunk[..n]),
                }
            }
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: \
                 {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    (base, hits)
}

/// `generate --fetch`: the selected adapter is not in any folder; it is downloaded from the
/// catalog's URL (a stub), checked against the catalog's sha256, cached, merged and rendered.
/// Two processes started at once on the same missing file download it once and both succeed.
#[test]
fn generate_fetch_downloads_the_selected_adapter_once_and_renders() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = full_vocab::full_vocab_checkpoint(
        &diffusion_fixture("sd/tiny-ldm.safetensors"),
        dir.path(),
    );
    let lora = std::fs::read(diffusion_fixture("lora/kohya_lora.safetensors")).unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&lora))
    };
    let (base, hits) = serve_file(lora);
    let item = serde_json::json!({
        "id": 7, "name": "Tabby Cat", "type": "LORA",
        "description": "<p>tabby cats, striped cat fur</p>",
        "tags": ["cat", "animal"],
        "modelVersions": [{"id": 70, "baseModel": "SD 1.5", "trainedWords": ["tabby cat"],
            "files": [{"name": "tabby_cat.safetensors", "type": "Model",
                "downloadUrl": format!("{base}/api/download/models/70"),
                "hashes": {"SHA256": sha.to_uppercase()}}]}]
    });
    let items = dir.path().join("items.jsonl");
    std::fs::write(&items, format!("{item}\n")).unwrap();
    let index = dir.path().join("index");
    let output = Command::new(env!("CARGO_BIN_EXE_stylus"))
        .args(["index", "--civitai"])
        .arg(&items)
        .arg("--out")
        .arg(&index)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let cache = dir.path().join("cache");
    let run = |out: &Path, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_stylus"))
            .args([
                "generate", "--steps", "1", "--width", "16", "--height", "16",
            ])
            .arg("--checkpoint")
            .arg(&checkpoint)
            .arg("--index")
            .arg(&index)
            .arg("--cache-dir")
            .arg(&cache)
            .args(extra)
            .arg("--out")
            .arg(out)
            .arg("a tabby cat")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Offline, nothing is cached: the missing file is listed with its URL (exit 3).
    let offline = run(&dir.path().join("offline"), &["--fetch", "--offline"])
        .wait_with_output()
        .unwrap();
    assert_eq!(offline.status.code(), Some(3));
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);

    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let first = run(&a, &["--fetch"]);
    let second = run(&b, &["--fetch"]);
    for child in [first, second] {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one download"
    );
    for out in [&a, &b] {
        let (_, text) = png_parameters(&out.join("0000.png"));
        assert!(text.contains("<lora:tabby_cat"), "{text}");
    }
    let blob = cache.join("blobs").join(format!("{sha}.safetensors"));
    assert!(blob.is_file(), "{}", blob.display());
    // The config's `[cache]` table names the same cache.
    let config = dir.path().join("stylus.toml");
    std::fs::write(
        &config,
        format!(
            "[cache]\ndir = {:?}\nmax_gb = 1\n",
            cache.display().to_string()
        ),
    )
    .unwrap();
    let listed = Command::new(env!("CARGO_BIN_EXE_stylus"))
        .arg("--config")
        .arg(&config)
        .args(["cache", "list"])
        .env_remove("STYLUS_ADAPTER_CACHE")
        .output()
        .unwrap();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&sha));
}
