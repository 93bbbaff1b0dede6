//! Input images for img2img / inpainting: every pixel layout converts, every bad file is a typed
//! error (never a panic), decompression bombs are refused from the header, JPEG EXIF orientation
//! is applied, masks of another size are refused unless resized.

use std::path::{Path, PathBuf};

use image::ImageEncoder;
use stylus_core::{ImageBytes, ResizeMode, StylusError};
use stylus_diffusion::image_input::{
    Input, latent_mask, load_mask, load_rgb, prepare_image, prepare_mask, probe,
};

fn write_png(
    path: &Path,
    width: u32,
    height: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
    palette: Option<&[u8]>,
) {
    let file = std::fs::File::create(path).unwrap();
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(color);
    encoder.set_depth(depth);
    if let Some(palette) = palette {
        encoder.set_palette(palette.to_vec());
    }
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(data).unwrap();
    writer.finish().unwrap();
}

fn rgb8(path: &Path, width: u32, height: u32, data: &[u8]) {
    write_png(
        path,
        width,
        height,
        png::ColorType::Rgb,
        png::BitDepth::Eight,
        data,
        None,
    );
}

fn is_image_error(err: &StylusError) -> bool {
    matches!(err, StylusError::Image { .. })
}

#[test]
fn eight_and_sixteen_bit_grey_palette_and_alpha_all_convert() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rgb.png");
    rgb8(&path, 2, 1, &[255, 0, 51, 0, 128, 255]);
    let image = load_rgb(&path).unwrap();
    assert_eq!((image.width, image.height), (2, 1));
    let expected = [1.0, 0.0, 0.2, 0.0, 128.0 / 255.0, 1.0];
    for (got, want) in image.pixels.iter().zip(expected) {
        assert!((got - want).abs() < 1e-6, "{:?}", image.pixels);
    }

    // 16-bit RGB: 65535 -> 1, 32768 -> 0.500008.
    let path = dir.path().join("rgb16.png");
    let mut data = Vec::new();
    for v in [65535u16, 0, 32768] {
        data.extend_from_slice(&v.to_be_bytes());
    }
    write_png(
        &path,
        1,
        1,
        png::ColorType::Rgb,
        png::BitDepth::Sixteen,
        &data,
        None,
    );
    let image = load_rgb(&path).unwrap();
    assert!((image.pixels[0] - 1.0).abs() < 1e-6 && image.pixels[1] == 0.0);
    assert!((image.pixels[2] - 32768.0 / 65535.0).abs() < 1e-6);

    // Palette: indices expand to the palette's colours.
    let path = dir.path().join("palette.png");
    write_png(
        &path,
        2,
        1,
        png::ColorType::Indexed,
        png::BitDepth::Eight,
        &[1, 0],
        Some(&[0, 0, 255, 255, 0, 0]),
    );
    let image = load_rgb(&path).unwrap();
    assert_eq!(image.pixels, vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0]);

    // Grey.
    let path = dir.path().join("grey.png");
    write_png(
        &path,
        1,
        1,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &[255],
        None,
    );
    assert_eq!(load_rgb(&path).unwrap().pixels, vec![1.0, 1.0, 1.0]);

    // RGBA: transparent black is white, opaque black stays black, half-transparent is between.
    let path = dir.path().join("rgba.png");
    write_png(
        &path,
        3,
        1,
        png::ColorType::Rgba,
        png::BitDepth::Eight,
        &[0, 0, 0, 0, 0, 0, 0, 255, 0, 0, 0, 51],
        None,
    );
    let image = load_rgb(&path).unwrap();
    assert_eq!(&image.pixels[..6], &[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
    assert!((image.pixels[6] - 0.8).abs() < 1e-6);
}

#[test]
fn unreadable_truncated_and_foreign_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.png");
    assert!(matches!(
        load_rgb(&missing).unwrap_err(),
        StylusError::Io { .. }
    ));

    let text = dir.path().join("notes.png");
    std::fs::write(&text, b"just some text, not an image").unwrap();
    let err = load_rgb(&text).unwrap_err();
    assert!(
        is_image_error(&err) && err.to_string().contains("not a PNG or JPEG"),
        "{err}"
    );

    let good = dir.path().join("good.png");
    rgb8(&good, 8, 8, &[7; 8 * 8 * 3]);
    let bytes = std::fs::read(&good).unwrap();
    for cut in [10, 40, bytes.len() - 20] {
        let truncated = dir.path().join(format!("cut{cut}.png"));
        std::fs::write(&truncated, &bytes[..cut]).unwrap();
        let err = load_rgb(&truncated).unwrap_err();
        assert!(is_image_error(&err), "cut at {cut}: {err}");
        assert!(err.to_string().contains("cut"), "names the file: {err}");
    }
    let empty = dir.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    assert!(load_rgb(&empty).is_err());
}

fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    let mut crc = flate2::Crc::new();
    crc.update(&body);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc.sum().to_be_bytes());
}

/// A small PNG whose header claims `width x height` RGB pixels: a few kilobytes of highly
/// compressible zeros that would decode to gigabytes.
fn bomb(width: u32, height: u32) -> Vec<u8> {
    use std::io::Write;
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    zlib.write_all(&vec![0u8; 1 << 20]).unwrap();
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &zlib.finish().unwrap());
    chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn decompression_bombs_are_refused_from_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.png");
    std::fs::write(&path, bomb(100_000, 100_000)).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() < 10_000);
    for err in [probe(&path).unwrap_err(), load_rgb(&path).unwrap_err()] {
        assert!(is_image_error(&err), "{err}");
        assert!(err.to_string().contains("100000x100000"), "{err}");
    }
}

/// A JPEG of `width x height` with an EXIF APP1 segment saying `orientation`.
fn jpeg_with_orientation(path: &Path, width: u32, height: u32, orientation: u16) {
    let mut pixels = Vec::new();
    for y in 0..height {
        for x in 0..width {
            // Left column red, the rest blue.
            let _ = y;
            pixels.extend_from_slice(if x == 0 { &[255, 0, 0] } else { &[0, 0, 255] });
        }
    }
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 100)
        .write_image(&pixels, width, height, image::ExtendedColorType::Rgb8)
        .unwrap();
    // TIFF little-endian, one IFD entry: Orientation (0x0112), SHORT, 1 value.
    let mut exif = b"Exif\0\0II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0".to_vec();
    exif.extend_from_slice(&orientation.to_le_bytes());
    exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((exif.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&exif);
    out.extend_from_slice(&jpeg[2..]);
    std::fs::write(path, out).unwrap();
}

#[test]
fn jpeg_exif_orientation_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let upright = dir.path().join("upright.jpg");
    jpeg_with_orientation(&upright, 8, 4, 1);
    assert_eq!(probe(&upright).unwrap(), (8, 4));
    // Orientation 6: the stored image is shown turned 90 degrees clockwise.
    let rotated = dir.path().join("rotated.jpg");
    jpeg_with_orientation(&rotated, 8, 4, 6);
    assert_eq!(probe(&rotated).unwrap(), (4, 8));
    let image = load_rgb(&rotated).unwrap();
    assert_eq!((image.width, image.height), (4, 8));
    // The red left column becomes the top row.
    let red = |p: &[f32]| p[0] > 0.8 && p[2] < 0.2;
    let px = |x: u32, y: u32| {
        let at = ((y * image.width + x) * 3) as usize;
        image.pixels[at..at + 3].to_vec()
    };
    assert!((0..4).all(|x| red(&px(x, 0))), "top row red");
    assert!((0..4).all(|x| !red(&px(x, 7))), "bottom row not red");
}

#[test]
fn resize_modes_fill_fit_and_stretch() {
    let dir = tempfile::tempdir().unwrap();
    // 4x2: red outer columns, green middle columns.
    let path = dir.path().join("wide.png");
    let (r, g) = ([255u8, 0, 0], [0u8, 255, 0]);
    let row: Vec<u8> = [r, g, g, r].concat();
    rgb8(&path, 4, 2, &[row.clone(), row].concat());
    // Fill to 2x2: the scaled size is the source size; the middle is cropped out whole.
    let fill = prepare_image(&path, 2, 2, ResizeMode::Fill).unwrap();
    assert_eq!(
        fill.pixels,
        [0.0, 1.0, 0.0].repeat(4),
        "the green middle columns"
    );
    // Fit to 8x4 (same aspect) and stretch to 8x2 keep the requested size.
    for (w, h, mode) in [
        (8, 4, ResizeMode::Fit),
        (8, 2, ResizeMode::Stretch),
        (6, 6, ResizeMode::Fit),
        (6, 6, ResizeMode::Fill),
    ] {
        let fitted = prepare_image(&path, w, h, mode).unwrap();
        assert_eq!(
            (fitted.width, fitted.height, fitted.pixels.len()),
            (w, h, (w * h * 3) as usize),
            "{mode:?}"
        );
    }
    // Fit of a uniform image into another aspect: the margin repeats the edges.
    let flat = dir.path().join("flat.png");
    rgb8(&flat, 2, 2, &[0, 0, 255].repeat(4));
    let fitted = prepare_image(&flat, 4, 2, ResizeMode::Fit).unwrap();
    for p in fitted.pixels.chunks_exact(3) {
        assert!(
            p[0].abs() < 1e-3 && (p[2] - 1.0).abs() < 1e-3,
            "{:?}",
            fitted.pixels
        );
    }
}

fn mask_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    // 4x4 grey: the right half white.
    let grey = dir.join("grey.png");
    let row = [0u8, 0, 255, 255];
    write_png(
        &grey,
        4,
        4,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &row.repeat(4),
        None,
    );
    // 4x4 RGBA: black everywhere, opaque on the right half, transparent on the left.
    let rgba = dir.join("rgba.png");
    let px = |a: u8| [0u8, 0, 0, a];
    let row: Vec<u8> = [px(0), px(0), px(255), px(255)].concat();
    write_png(
        &rgba,
        4,
        4,
        png::ColorType::Rgba,
        png::BitDepth::Eight,
        &row.repeat(4),
        None,
    );
    let small = dir.join("small.png");
    write_png(
        &small,
        2,
        2,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &[0, 255, 0, 255],
        None,
    );
    (grey, rgba, small)
}

#[test]
fn masks_grey_or_alpha_sizes_checked_and_downsampled() {
    let dir = tempfile::tempdir().unwrap();
    let (grey, rgba, small) = mask_files(dir.path());
    let right_half: Vec<f32> = [0.0, 0.0, 1.0, 1.0].repeat(4);
    assert_eq!(load_mask(&grey).unwrap().pixels, right_half);
    assert_eq!(load_mask(&rgba).unwrap().pixels, right_half);
    for path in [&grey, &rgba] {
        let mask = prepare_mask(path, (4, 4), (4, 4), ResizeMode::Fill, 0, false, false).unwrap();
        assert_eq!(mask.binary, right_half);
    }
    // Another size than the image: an error naming the flag, unless resized.
    let err = prepare_mask(&small, (4, 4), (4, 4), ResizeMode::Fill, 0, false, false).unwrap_err();
    assert!(
        is_image_error(&err) && err.to_string().contains("--resize-mask"),
        "{err}"
    );
    let resized = prepare_mask(&small, (4, 4), (4, 4), ResizeMode::Fill, 0, true, false).unwrap();
    assert_eq!(resized.binary.len(), 16);
    // A blur softens the edge but keeps the binarized halves.
    let blurred = prepare_mask(&grey, (4, 4), (4, 4), ResizeMode::Fill, 1, false, false).unwrap();
    assert!(blurred.soft.iter().any(|&v| v > 0.0 && v < 1.0));
    assert_eq!(blurred.binary[0], 0.0);
    assert_eq!(blurred.binary[3], 1.0);
    // Inverted: the left half is repainted.
    let inverted = prepare_mask(&grey, (4, 4), (4, 4), ResizeMode::Fill, 0, false, true).unwrap();
    let left_half: Vec<f32> = right_half.iter().map(|v| 1.0 - v).collect();
    assert_eq!(inverted.binary, left_half);
    // Latent resolution: every second pixel.
    assert_eq!(latent_mask(&right_half, 4, 4, 2), vec![0.0, 1.0, 0.0, 1.0]);
}

#[test]
fn images_in_memory_decode_like_files_and_pass_the_same_checks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("photo.png");
    let data: Vec<u8> = (0..4 * 2 * 3).map(|v| (v * 10) as u8).collect();
    rgb8(&path, 4, 2, &data);
    let name = Path::new("init_images[0]");
    let bytes = ImageBytes::from(std::fs::read(&path).unwrap());
    let memory = Input::new(name, Some(&bytes));
    assert_eq!(probe(memory).unwrap(), (4, 2));
    assert_eq!(load_rgb(memory).unwrap(), load_rgb(&path).unwrap());
    assert_eq!(
        prepare_image(memory, 8, 8, ResizeMode::Fit).unwrap(),
        prepare_image(&path, 8, 8, ResizeMode::Fit).unwrap()
    );
    assert_eq!(load_mask(memory).unwrap(), load_mask(&path).unwrap());

    // Errors name the upload, not a file; a bomb is refused from its header.
    let text = ImageBytes::from(b"just some text".to_vec());
    let err = probe(Input::new(name, Some(&text))).unwrap_err();
    assert!(is_image_error(&err), "{err}");
    assert!(
        err.to_string().contains("init_images[0]") && err.to_string().contains("not a PNG or JPEG"),
        "{err}"
    );
    let bomb = ImageBytes::from(bomb(100_000, 100_000));
    for err in [
        probe(Input::new(name, Some(&bomb))).unwrap_err(),
        load_rgb(Input::new(name, Some(&bomb))).unwrap_err(),
    ] {
        assert!(err.to_string().contains("100000x100000"), "{err}");
    }
    let all = std::fs::read(&path).unwrap();
    let cut = ImageBytes::from(all[..all.len() - 20].to_vec());
    let err = load_rgb(Input::new(name, Some(&cut))).unwrap_err();
    assert!(is_image_error(&err), "{err}");
}
