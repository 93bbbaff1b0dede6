//! A local folder of LoRA files as catalog cards.
//!
//! For each `*.safetensors` file we read only the header (8-byte length + JSON), never the
//! tensors: kohya's `ss_*` training metadata (`ss_output_name` is the alias, `ss_tag_frequency`
//! gives tags, `ss_training_comment` often names the trigger word), `modelspec.*` (title,
//! description, architecture), and the tensor names and shapes (base model when the metadata does
//! not say). Sidecar files next to it add what a catalog knows:
//! - `<stem>.civitai.info` (A1111 Civitai Helper): the Civitai model-version JSON;
//! - `<stem>.metadata.json` (ComfyUI-Lora-Manager): the same under a `civitai` key;
//! - `<stem>.json` (A1111's own): `description`, `sd version`, `activation text`,
//!   `preferred weight`, `notes`.
//!
//! A file with Civitai data gets its Civitai model id; others get `sha256:<sshs_model_hash>`, the
//! sha256 of the bytes after the header (what kohya's `sshs_model_hash` stores, so editing the
//! metadata does not change the id). A bad file (truncated header, a header over
//! [`MAX_HEADER_BYTES`], non-UTF-8 or non-string metadata) is an error for that file only.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use stylus_core::{AdapterCard, AdapterFile, AdapterId, BaseModel, Result, StylusError};

use crate::civitai::{CatalogEntry, CatalogRead, file_stem};
use crate::html::html_to_text;

/// Headers larger than this are refused: real LoRA headers are a few hundred KB, and the length
/// field is untrusted (a corrupt one would make us allocate gigabytes).
pub const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// Tags taken from `ss_tag_frequency`, most frequent first.
const MAX_TRAINING_TAGS: usize = 20;

/// One tensor entry of a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: String,
    pub shape: Vec<usize>,
}

/// The parsed header of a safetensors file.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetensorsHeader {
    /// Length of the JSON header in bytes (tensor data starts at `8 + header_len`).
    pub header_len: u64,
    /// `__metadata__`: string keys to string values.
    pub metadata: BTreeMap<String, String>,
    pub tensors: BTreeMap<String, TensorInfo>,
}

/// What a file that is not safetensors seems to be, from its first bytes.
fn looks_like(start: &[u8; 8]) -> &'static str {
    if start.starts_with(b"PK\x03\x04") {
        "a zip archive, like PyTorch .pt/.ckpt pickles, which are refused because loading them \
         can run code"
    } else if start[0] == 0x80 && start[1] <= 5 {
        "a Python pickle, refused because loading it can run code"
    } else if start.starts_with(b"GGUF") {
        "a GGUF file"
    } else if start
        .iter()
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        "it starts with text"
    } else {
        "unknown content"
    }
}

/// Reads the header of a safetensors file without reading its tensors.
pub fn read_header(path: &Path) -> Result<SafetensorsHeader> {
    let invalid = |message: String| StylusError::Safetensors {
        path: path.to_path_buf(),
        message,
        source: None,
    };
    let mut file = std::fs::File::open(path).map_err(|e| StylusError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| StylusError::io(path, e))?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes).map_err(|_| {
        invalid(format!(
            "truncated: {file_len} bytes, no 8-byte header length"
        ))
    })?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES {
        return Err(invalid(format!(
            "not a safetensors file ({}): its first 8 bytes announce a {header_len}-byte \
             header, over the {MAX_HEADER_BYTES}-byte limit",
            looks_like(&len_bytes)
        )));
    }
    if 8 + header_len > file_len {
        return Err(invalid(format!(
            "truncated header: {header_len} bytes announced, {} present",
            file_len - 8
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| StylusError::io(path, e))?;
    let text = std::str::from_utf8(&header)
        .map_err(|e| invalid(format!("header is not UTF-8 (byte {})", e.valid_up_to())))?;
    let json: Map<String, Value> = serde_json::from_str(text.trim_end())
        .map_err(|e| invalid(format!("header is not a JSON object: {e}")))?;

    let mut metadata = BTreeMap::new();
    let mut tensors = BTreeMap::new();
    for (key, value) in json {
        if key == "__metadata__" {
            let Value::Object(entries) = value else {
                return Err(invalid("`__metadata__` is not an object".into()));
            };
            for (name, value) in entries {
                let Value::String(value) = value else {
                    return Err(invalid(format!("metadata `{name}` is not a string")));
                };
                metadata.insert(name, value);
            }
            continue;
        }
        let info = tensor_info(&value)
            .ok_or_else(|| invalid(format!("tensor `{key}` has no valid dtype/shape")))?;
        tensors.insert(key, info);
    }
    Ok(SafetensorsHeader {
        header_len,
        metadata,
        tensors,
    })
}

fn tensor_info(value: &Value) -> Option<TensorInfo> {
    let dtype = value.get("dtype")?.as_str()?.to_string();
    let shape = value
        .get("shape")?
        .as_array()?
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize))
        .collect::<Option<Vec<_>>>()?;
    Some(TensorInfo { dtype, shape })
}

/// The two hashes of a safetensors file, computed in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHashes {
    /// sha256 of the whole file (what Civitai publishes as `SHA256`).
    pub file_sha256: String,
    /// sha256 of the bytes after the header: kohya's `sshs_model_hash`.
    pub sshs_model_hash: String,
}

/// Hashes a safetensors file whose header is `header_len` bytes long.
pub fn hash_safetensors(path: &Path, header_len: u64) -> Result<FileHashes> {
    let mut file = std::fs::File::open(path).map_err(|e| StylusError::io(path, e))?;
    let mut whole = Sha256::new();
    let mut data = Sha256::new();
    let mut position = 0u64;
    let data_start = 8 + header_len;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(|e| StylusError::io(path, e))?;
        if n == 0 {
            break;
        }
        let chunk = &buffer[..n];
        whole.update(chunk);
        let end = position + n as u64;
        if end > data_start {
            let from = data_start.saturating_sub(position) as usize;
            data.update(&chunk[from..]);
        }
        position = end;
    }
    Ok(FileHashes {
        file_sha256: hex::encode(whole.finalize()),
        sshs_model_hash: hex::encode(data.finalize()),
    })
}

/// The base model a LoRA was trained for: from the metadata (`ss_base_model_version`,
/// `modelspec.architecture`, `ss_v2`), else from the tensors (`lora_te1_`/`lora_te2_` prefixes or
/// a 2048-wide cross-attention input mean SDXL; 1024 SD 2.x; 768 SD 1.x).
pub fn detect_base_model(header: &SafetensorsHeader) -> Option<BaseModel> {
    let meta = &header.metadata;
    for key in ["ss_base_model_version", "modelspec.architecture"] {
        if let Some(value) = meta.get(key).filter(|v| !v.trim().is_empty()) {
            return Some(BaseModel::parse(value));
        }
    }
    if meta
        .get("ss_v2")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return Some(BaseModel::Sd2);
    }
    base_model_from_tensors(&header.tensors)
}

/// The base model from tensor names and shapes alone.
pub fn base_model_from_tensors(tensors: &BTreeMap<String, TensorInfo>) -> Option<BaseModel> {
    if tensors
        .keys()
        .any(|k| k.starts_with("lora_te1_") || k.starts_with("lora_te2_"))
    {
        return Some(BaseModel::Sdxl);
    }
    // Cross-attention keys/values read the text encoder's context: its width names the model.
    let context = cross_attention_width(tensors, |k| {
        k.contains("attn2") && (k.contains("to_k") || k.contains("to_v"))
    });
    if let Some(width) = context {
        return match width {
            768 => Some(BaseModel::Sd1),
            1024 => Some(BaseModel::Sd2),
            2048 => Some(BaseModel::Sdxl),
            _ => None,
        };
    }
    // Text-encoder-only LoRAs: CLIP-L is 768 wide, OpenCLIP-H 1024.
    match cross_attention_width(tensors, |k| {
        (k.starts_with("lora_te_") || k.starts_with("text_encoder")) && k.contains("k_proj")
    }) {
        Some(768) => Some(BaseModel::Sd1),
        Some(1024) => Some(BaseModel::Sd2),
        _ => None,
    }
}

/// The input width of the first module whose name passes `select`, from its down/A matrix
/// (LoRA, LoCon, PEFT, diffusers), its LoHa `hada_w1_b`, or its LoKr factors (`in = cols(w1) *
/// cols(w2)`).
fn cross_attention_width(
    tensors: &BTreeMap<String, TensorInfo>,
    select: impl Fn(&str) -> bool,
) -> Option<usize> {
    let cols = |name: &str| tensors.get(name).and_then(|t| t.shape.get(1).copied());
    for key in tensors.keys().filter(|k| select(k)) {
        for suffix in [
            ".lora_down.weight",
            ".lora_A.weight",
            ".lora.down.weight",
            ".hada_w1_b",
        ] {
            if key.ends_with(suffix)
                && let Some(width) = cols(key)
            {
                return Some(width);
            }
        }
        if let Some(module) = key
            .strip_suffix(".lokr_w1_b")
            .or_else(|| key.strip_suffix(".lokr_w1"))
        {
            let w1 =
                cols(&format!("{module}.lokr_w1")).or_else(|| cols(&format!("{module}.lokr_w1_b")));
            let w2 =
                cols(&format!("{module}.lokr_w2")).or_else(|| cols(&format!("{module}.lokr_w2_b")));
            // Header shapes are untrusted: a product that overflows names no model.
            if let (Some(a), Some(b)) = (w1, w2) {
                return a.checked_mul(b);
            }
        }
    }
    None
}

/// Tags from kohya's `ss_tag_frequency` (`{dataset: {tag: count}}`), most frequent first.
pub fn training_tags(metadata: &BTreeMap<String, String>) -> Vec<String> {
    let Some(raw) = metadata.get("ss_tag_frequency") else {
        return Vec::new();
    };
    let Ok(Value::Object(datasets)) = serde_json::from_str::<Value>(raw) else {
        tracing::debug!("ignoring unparsable ss_tag_frequency");
        return Vec::new();
    };
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for tags in datasets.values().filter_map(Value::as_object) {
        for (tag, count) in tags {
            let tag = tag.trim().replace("\\(", "(").replace("\\)", ")");
            if !tag.is_empty() {
                *counts.entry(tag).or_insert(0) += count.as_u64().unwrap_or(1);
            }
        }
    }
    let mut tags: Vec<(String, u64)> = counts.into_iter().collect();
    tags.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    tags.into_iter()
        .take(MAX_TRAINING_TAGS)
        .map(|(tag, _)| tag)
        .collect()
}

/// Reads every `*.safetensors` file under `dir` (recursively, sorted by path). Each file that
/// cannot be read is one error in `malformed`; the others become entries.
pub fn read_lora_folder(dir: &Path) -> CatalogRead {
    let mut read = CatalogRead::default();
    let files = match safetensors_files_in(dir) {
        Ok(files) => files,
        Err(err) => {
            read.items_read = 1;
            read.malformed.push(err);
            return read;
        }
    };
    for file in files {
        read.items_read += 1;
        match entry_from_lora_file(&file) {
            Ok(entry) => read.entries.push(entry),
            // Reported by the caller (once), with the rest of `malformed`.
            Err(err) => read.malformed.push(err),
        }
    }
    read
}

/// The `*.safetensors` files under `dir`, recursively, sorted.
pub fn safetensors_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current).map_err(|e| StylusError::io(&current, e))?;
        for entry in entries {
            let path = entry.map_err(|e| StylusError::io(&current, e))?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
            {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The catalog entry of one LoRA file and its sidecars.
pub fn entry_from_lora_file(path: &Path) -> Result<CatalogEntry> {
    let header = read_header(path)?;
    let hashes = hash_safetensors(path, header.header_len)?;
    let meta = &header.metadata;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = file_stem(&file_name).unwrap_or_else(|| file_name.clone());
    let sidecars = Sidecars::read(path, &stem)?;
    let civitai = sidecars.civitai.as_ref();
    let civitai_model = civitai
        .and_then(|v| v.get("model"))
        .and_then(Value::as_object);
    let get_str = |object: Option<&Map<String, Value>>, key: &str| {
        object
            .and_then(|o| o.get(key))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let nonempty_meta = |key: &str| {
        meta.get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty() && *v != "None")
            .map(str::to_string)
    };

    let id = match civitai
        .and_then(|v| v.get("modelId"))
        .and_then(Value::as_u64)
    {
        Some(model_id) => AdapterId::Civitai(model_id),
        None => AdapterId::local_from_sha256(&hashes.sshs_model_hash),
    };
    let title = get_str(civitai_model, "name")
        .or_else(|| sidecars.model_name.clone())
        .or_else(|| nonempty_meta("modelspec.title"))
        .or_else(|| nonempty_meta("ss_output_name"))
        .unwrap_or_else(|| stem.clone());
    let adapter_type = get_str(civitai_model, "type").unwrap_or_else(|| "LORA".to_string());
    let mut card = AdapterCard::new(id, title, adapter_type);
    card.version_id = civitai.and_then(|v| v.get("id")).and_then(Value::as_u64);
    card.alias = nonempty_meta("ss_output_name").or(Some(stem));
    card.base_model = get_str(civitai, "baseModel")
        .map(|b| BaseModel::parse(&b))
        .or_else(|| sidecars.sd_version.as_deref().map(BaseModel::parse))
        .or_else(|| detect_base_model(&header));
    card.nsfw = civitai_model
        .and_then(|m| m.get("nsfw"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    card.poi = civitai_model
        .and_then(|m| m.get("poi"))
        .and_then(Value::as_bool)
        .unwrap_or(false);

    let mut description = Vec::new();
    if let Some(html) =
        get_str(civitai, "description").or_else(|| sidecars.model_description.clone())
    {
        description.push(html_to_text(&html));
    }
    for text in [
        nonempty_meta("modelspec.description"),
        sidecars.description.clone(),
        sidecars.notes.clone(),
        nonempty_meta("ss_training_comment").map(|c| format!("Training comment: {c}")),
    ]
    .into_iter()
    .flatten()
    {
        description.push(text);
    }
    if let Some(weight) = sidecars.preferred_weight {
        // The CardRefiner's text rule reads it from here.
        description.push(format!("Preferred weight: {weight}"));
    }
    card.description = description.join("\n");

    card.tags = sidecars.tags.clone();
    for tag in training_tags(meta) {
        if !card.tags.iter().any(|t| t.eq_ignore_ascii_case(&tag)) {
            card.tags.push(tag);
        }
    }
    if let Some(words) = civitai
        .and_then(|v| v.get("trainedWords"))
        .and_then(Value::as_array)
    {
        card.trigger_words = words
            .iter()
            .filter_map(Value::as_str)
            .map(|w| w.trim().to_string())
            .filter(|w| !w.is_empty())
            .collect();
    }
    if let Some(activation) = &sidecars.activation_text {
        for word in activation
            .split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty())
        {
            if !card.trigger_words.iter().any(|t| t == word) {
                card.trigger_words.push(word.to_string());
            }
        }
    }
    if let Some(images) = civitai
        .and_then(|v| v.get("images"))
        .and_then(Value::as_array)
    {
        for image in images.iter().filter_map(Value::as_object) {
            card.image_count += 1;
            if let Some(url) = get_str(Some(image), "url") {
                card.sample_images.push(url);
            }
            let prompt = get_str(image.get("meta").and_then(Value::as_object), "prompt");
            if let Some(prompt) = prompt
                && !card.sample_prompts.contains(&prompt)
            {
                card.sample_prompts.push(prompt);
            }
        }
    }
    let size_kb = std::fs::metadata(path)
        .map(|m| m.len() as f64 / 1024.0)
        .map_err(|e| StylusError::io(path, e))?;
    card.file = Some(AdapterFile {
        name: file_name,
        sha256: Some(hashes.file_sha256),
        download_url: get_str(civitai, "downloadUrl"),
        size_kb: Some(size_kb),
    });
    let has_sd15_safetensors = card.base_model.as_ref().is_some_and(BaseModel::is_sd1);
    Ok(CatalogEntry {
        card,
        origin: path.display().to_string(),
        has_sd15_safetensors,
    })
}

/// What the sidecar files next to a LoRA say.
#[derive(Debug, Default)]
struct Sidecars {
    /// The Civitai model-version object (`.civitai.info`, or `civitai` in `.metadata.json`).
    civitai: Option<Map<String, Value>>,
    model_name: Option<String>,
    model_description: Option<String>,
    tags: Vec<String>,
    description: Option<String>,
    notes: Option<String>,
    sd_version: Option<String>,
    activation_text: Option<String>,
    preferred_weight: Option<f64>,
}

impl Sidecars {
    fn read(lora: &Path, stem: &str) -> Result<Self> {
        let dir = lora.parent().unwrap_or(Path::new("."));
        let mut sidecars = Self::default();
        if let Some(info) = read_json_object(&dir.join(format!("{stem}.civitai.info")))? {
            sidecars.civitai = Some(info);
        }
        if let Some(manager) = read_json_object(&dir.join(format!("{stem}.metadata.json")))? {
            if sidecars.civitai.is_none()
                && let Some(Value::Object(civitai)) = manager.get("civitai")
                && !civitai.is_empty()
            {
                sidecars.civitai = Some(civitai.clone());
            }
            sidecars.model_name = string_field(&manager, "model_name");
            sidecars.model_description = string_field(&manager, "modelDescription");
            if let Some(Value::Array(tags)) = manager.get("tags") {
                sidecars.tags = tags
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .collect();
            }
        }
        if let Some(a1111) = read_json_object(&dir.join(format!("{stem}.json")))? {
            sidecars.description = string_field(&a1111, "description");
            sidecars.notes = string_field(&a1111, "notes");
            sidecars.sd_version =
                string_field(&a1111, "sd version").filter(|v| !v.eq_ignore_ascii_case("unknown"));
            sidecars.activation_text = string_field(&a1111, "activation text");
            // A1111 writes a number; hand-edited files sometimes hold a string.
            sidecars.preferred_weight = match a1111.get("preferred weight") {
                Some(Value::Number(n)) => n.as_f64(),
                Some(Value::String(s)) => s.trim().parse().ok(),
                _ => None,
            }
            .filter(|w| *w > 0.0 && w.is_finite());
        }
        Ok(sidecars)
    }
}

fn string_field(object: &Map<String, Value>, key: &str) -> Option<String> {
    object
        .get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// A sidecar's JSON object; `None` when the file does not exist.
fn read_json_object(path: &Path) -> Result<Option<Map<String, Value>>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StylusError::io(path, e)),
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(object)) => Ok(Some(object)),
        Ok(_) => Err(StylusError::Json {
            path: path.to_path_buf(),
            line: None,
            message: "sidecar is not a JSON object".into(),
            source: None,
        }),
        Err(e) => Err(StylusError::Json {
            path: path.to_path_buf(),
            line: Some(e.line()),
            message: e.to_string(),
            source: Some(Box::new(e)),
        }),
    }
}
