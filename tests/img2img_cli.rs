//! `stylus generate --init-image` (img2img) and `--mask` (inpainting) end to end on CPU with the
//! small random-weight SD model: the PNG's `parameters` parse with a port of A1111's PNG-info
//! reader (`parse_generation_parameters`, modules/infotext_utils.py) and say "Denoising
//! strength"; plan.json records the mode; strength 1 is txt2img; the unmasked area keeps the
//! photo's pixels; bad input is a clear error, never a panic.

#[path = "../crates/stylus-diffusion/tests/common/full_vocab.rs"]
mod full_vocab;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn diffusion_fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/stylus-diffusion/tests/fixtures")
        .join(path)
}

fn generate(checkpoint: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stylus"))
        .arg("generate")
        .arg("--checkpoint")
        .arg(checkpoint)
        .args([
            "--no-select",
            "--steps",
            "4",
            "--width",
            "16",
            "--height",
            "16",
            "--seed",
            "3",
            "--out",
        ])
        .arg(out)
        .args(extra)
        .arg("a castle on a hill")
        .output()
        .unwrap()
}

/// An 8-bit PNG of `color` (RGB or grayscale) pixels.
fn write_png8(path: &Path, color: png::ColorType, width: u32, height: u32, pixels: &[u8]) {
    let file = std::fs::File::create(path).unwrap();
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(pixels).unwrap();
    writer.finish().unwrap();
}

fn write_rgb(path: &Path, width: u32, height: u32, rgb: &[u8]) {
    write_png8(path, png::ColorType::Rgb, width, height, rgb);
}

fn write_grey(path: &Path, width: u32, height: u32, grey: &[u8]) {
    write_png8(path, png::ColorType::Grayscale, width, height, grey);
}

/// Pixels and the `parameters` text of a generated PNG.
fn read_png(path: &Path) -> (Vec<u8>, String) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut pixels).unwrap();
    let text = reader
        .info()
        .uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == "parameters")
        .map(|c| c.text.clone())
        .expect("a parameters chunk");
    (pixels, text)
}

/// A1111's `parse_generation_parameters`: prompt lines, `Negative prompt:` lines, and the last
/// line's `key: value` pairs (at least 3, else it is prompt text); `WxH` values split into
/// `key-1` / `key-2`; quoted values unquoted as JSON.
fn a1111_parse(text: &str) -> (String, HashMap<String, String>) {
    let param =
        regex::Regex::new(r#"\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)"#).unwrap();
    let size = regex::Regex::new(r"^(\d+)x(\d+)$").unwrap();
    let mut lines: Vec<&str> = text.trim().split('\n').collect();
    let mut last = lines.pop().unwrap_or("");
    if param.captures_iter(last).count() < 3 {
        lines.push(last);
        last = "";
    }
    let mut prompt = Vec::new();
    for line in lines {
        let line = line.trim();
        if line.starts_with("Negative prompt:") {
            break;
        }
        prompt.push(line);
    }
    let mut result = HashMap::new();
    for caps in param.captures_iter(last) {
        let key = caps[1].to_string();
        let mut value = caps[2].to_string();
        if value.starts_with('"') && value.ends_with('"') {
            value = serde_json::from_str(&value).unwrap();
        }
        match size.captures(&value) {
            Some(m) => {
                result.insert(format!("{key}-1"), m[1].to_string());
                result.insert(format!("{key}-2"), m[2].to_string());
            }
            None => {
                result.insert(key, value);
            }
        }
    }
    (prompt.join("\n"), result)
}

fn setup(dir: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let checkpoint =
        full_vocab::full_vocab_checkpoint(&diffusion_fixture("sd/tiny-ldm.safetensors"), dir);
    // 24x16: fill crops the middle 16 columns without resampling (the height already fits).
    let photo = dir.join("photo.png");
    let rgb: Vec<u8> = (0..24 * 16 * 3).map(|i| ((i * 37) % 251) as u8).collect();
    write_rgb(&photo, 24, 16, &rgb);
    (checkpoint, photo, rgb)
}

fn plan(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("plan.json")).unwrap()).unwrap()
}

fn assert_ok(output: &Output) {
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn img2img_writes_a_png_a1111_parses_and_strength_1_is_txt2img() {
    let dir = tempfile::tempdir().unwrap();
    let (checkpoint, photo, _) = setup(dir.path());
    let out = dir.path().join("img2img");
    let output = generate(
        &checkpoint,
        &out,
        &["--init-image", photo.to_str().unwrap(), "--strength", "0.5"],
    );
    assert_ok(&output);
    let (pixels, text) = read_png(&out.join("0000.png"));
    assert_eq!(pixels.len(), 16 * 16 * 3);
    let (prompt, params) = a1111_parse(&text);
    assert_eq!(prompt, "a castle on a hill", "{text}");
    assert_eq!(params["Denoising strength"], "0.5", "{text}");
    assert_eq!(params["Steps"], "4");
    assert_eq!(params["Seed"], "3");
    assert_eq!((&params["Size-1"][..], &params["Size-2"][..]), ("16", "16"));
    assert_eq!(params["Sampler"], "DPM++ 2M Karras");
    assert!(!params.contains_key("Mask blur"), "{text}");
    let recorded = plan(&out);
    assert_eq!(recorded["mode"], "img2img");
    assert_eq!(recorded["init_image"]["strength"], 0.5);
    assert_eq!(recorded["init_image"]["resize_mode"], "fill");

    // Strength 1 starts from the seed's pure noise: the txt2img image, bit for bit.
    let full = dir.path().join("full");
    assert_ok(&generate(
        &checkpoint,
        &full,
        &["--init-image", photo.to_str().unwrap(), "--strength", "1"],
    ));
    let txt2img = dir.path().join("txt2img");
    assert_ok(&generate(&checkpoint, &txt2img, &[]));
    assert_eq!(
        read_png(&full.join("0000.png")).0,
        read_png(&txt2img.join("0000.png")).0
    );
    assert_eq!(plan(&txt2img)["mode"], "txt2img");
    // Another strength, another image; the same run again, the same bytes.
    assert_ne!(read_png(&full.join("0000.png")).0, pixels);
    let again = dir.path().join("again");
    assert_ok(&generate(
        &checkpoint,
        &again,
        &["--init-image", photo.to_str().unwrap(), "--strength", "0.5"],
    ));
    assert_eq!(read_png(&again.join("0000.png")).0, pixels);
}

#[test]
fn inpainting_keeps_the_unmasked_pixels_and_records_the_mask_blur() {
    let dir = tempfile::tempdir().unwrap();
    let (checkpoint, photo, rgb) = setup(dir.path());
    // Repaint the middle columns 8..16 of the 24-wide photo (columns 4..12 after the crop).
    let mask_path = dir.path().join("mask.png");
    let mask: Vec<u8> = (0..24 * 16)
        .map(|i| if (8..16).contains(&(i % 24)) { 255 } else { 0 })
        .collect();
    write_grey(&mask_path, 24, 16, &mask);
    let out = dir.path().join("inpaint");
    let output = generate(
        &checkpoint,
        &out,
        &[
            "--init-image",
            photo.to_str().unwrap(),
            "--mask",
            mask_path.to_str().unwrap(),
            "--mask-blur",
            "1",
            "--strength",
            "0.75",
        ],
    );
    assert_ok(&output);
    let (pixels, text) = read_png(&out.join("0000.png"));
    let (_, params) = a1111_parse(&text);
    assert_eq!(params["Denoising strength"], "0.75", "{text}");
    assert_eq!(params["Mask blur"], "1", "{text}");
    assert_eq!(plan(&out)["mode"], "inpaint");
    // Column 0 of the output is column 4 of the photo, far from the mask: unchanged.
    for y in 0..16 {
        let ours = &pixels[(y * 16) * 3..(y * 16) * 3 + 3];
        let photo_px = &rgb[(y * 24 + 4) * 3..(y * 24 + 4) * 3 + 3];
        assert_eq!(ours, photo_px, "row {y}");
    }
    // The middle of the mask is repainted.
    let middle = (8 * 16 + 8) * 3;
    let photo_middle = (8 * 24 + 12) * 3;
    assert_ne!(
        &pixels[middle..middle + 3],
        &rgb[photo_middle..photo_middle + 3]
    );
}

#[test]
fn bad_img2img_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (checkpoint, photo, _) = setup(dir.path());
    let photo = photo.to_str().unwrap();
    let truncated = dir.path().join("truncated.png");
    let bytes = std::fs::read(photo).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let small_mask = dir.path().join("small.png");
    write_grey(&small_mask, 8, 8, &[255; 64]);
    let latents = dir.path().join("latents.safetensors");
    std::fs::write(&latents, b"x").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--init-image", photo, "--strength", "1.5"],
            "--strength 1.5",
        ),
        (
            vec!["--init-image", photo, "--strength", "NaN"],
            "--strength",
        ),
        (
            vec!["--init-image", truncated.to_str().unwrap()],
            "truncated.png",
        ),
        (vec!["--init-image", "/no/such/photo.png"], "photo.png"),
        (
            vec![
                "--init-image",
                photo,
                "--latents",
                latents.to_str().unwrap(),
            ],
            "--latents",
        ),
        (
            vec![
                "--init-image",
                photo,
                "--mask",
                small_mask.to_str().unwrap(),
            ],
            "--resize-mask",
        ),
        (
            vec![
                "--init-image",
                photo,
                "--mask",
                small_mask.to_str().unwrap(),
                "--resize-mask",
                "--inpaint-model",
            ],
            "inpainting",
        ),
        (vec!["--strength", "0.5"], "--init-image"),
        (vec!["--mask", photo], "--init-image"),
    ];
    for (i, (extra, needle)) in cases.iter().enumerate() {
        let output = generate(&checkpoint, &dir.path().join(format!("out{i}")), extra);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{extra:?} should fail");
        assert!(!stderr.contains("panicked"), "{extra:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{extra:?}: wanted {needle}: {stderr}"
        );
    }
}
